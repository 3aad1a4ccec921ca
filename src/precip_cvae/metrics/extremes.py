"""Extremes: quantiles of pooled intensities, wet-day frequency, Rx1day."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from precip_cvae.data.quantiles import LogHistogram
from precip_cvae.metrics._core import (
    Accumulator,
    DeviceFields,
    Fields,
    _div,
    _f64,
    _mean,
    _q_label,
    _valid,
    ensemble_score,
    run_once,
)


class Intensities(Accumulator):
    """All member values and all observed values of the valid points, through two :class:`LogHistogram`: quantile
    biases ``quantile_bias_<q>`` (simulated - observed, mm/day), ``quantile_ratio_<q>``, ``quantile_sim_<q>``,
    ``quantile_obs_<q>`` (q as ``P95``, ``P99``, ``P99.9``; 0.1 % relative accuracy), and the wet-day frequencies
    ``wet_day_frequency_sim`` / ``_obs`` (share of values >= ``wet`` mm/day). Without ``quantiles`` (validation's
    wet-day frequencies) no histogram is kept: ``sim`` and ``obs`` are None, and only the counts are."""

    def __init__(self, quantiles: Sequence[float] = (0.95, 0.99, 0.999), wet: float = 1.0):
        self.quantiles = tuple(float(q) for q in quantiles)
        self.wet = float(wet)
        self.sim, self.obs = (LogHistogram(), LogHistogram()) if self.quantiles else (None, None)
        self.wet_sim = self.wet_obs = self.n_sim = self.n_obs = 0

    def settings(self) -> tuple:
        return (self.quantiles, self.wet)

    def accum(self, f: Fields) -> None:
        if f.n:
            self._add(f, "add")

    def accum_device(self, f: DeviceFields) -> None:
        """:meth:`accum` on a batch of torch tensors, where they are (the histograms' counts come back)."""
        if f.n:
            self._add(f, "add_device")

    def _add(self, f: Fields | DeviceFields, how: str) -> None:
        if self.quantiles:
            getattr(self.sim, how)(f.x)
            getattr(self.obs, how)(f.y)
        self.n_sim += math.prod(f.x.shape)  # the valid points: every value finite
        self.n_obs += math.prod(f.y.shape)
        self.wet_sim += int((f.x >= self.wet).sum())
        self.wet_obs += int((f.y >= self.wet).sum())

    def _merge(self, other: Intensities) -> None:  # type: ignore[override]
        if self.quantiles:
            self.sim.merge(other.sim)
            self.obs.merge(other.obs)
        self.wet_sim += other.wet_sim
        self.wet_obs += other.wet_obs
        self.n_sim += other.n_sim
        self.n_obs += other.n_obs

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for q in self.quantiles:
            label = _q_label(q)
            qs, qo = self.sim.quantile(q), self.obs.quantile(q)
            out[f"quantile_bias_{label}"] = qs - qo
            out[f"quantile_ratio_{label}"] = _div(qs, qo)
            out[f"quantile_sim_{label}"] = qs
            out[f"quantile_obs_{label}"] = qo
        out["wet_day_frequency_sim"] = _div(self.wet_sim, self.n_sim)
        out["wet_day_frequency_obs"] = _div(self.wet_obs, self.n_obs)
        return out


class Rx1day(Accumulator):
    """Rx1day bias: the mean over pixels of (each member's largest daily value, averaged over members - the observed
    largest daily value), both over the same valid pixel-days: ``Rx1day_bias``. Fields are taken as days."""

    def __init__(self) -> None:
        self.rx_obs: np.ndarray | None = None  # (H, W) running max, -inf where never valid
        self.rx_sim: np.ndarray | None = None  # (K, H, W)

    def accum(self, f: Fields) -> None:
        for ens, obs, v in f.fields():
            self._fold(np.where(v, obs, -np.inf), np.where(v, ens, -np.inf))

    def accum_device(self, f: DeviceFields) -> None:
        """:meth:`accum` on a batch of torch tensors: the batch's maxima where they are, then folded in here."""
        if f.n_fields:
            v = f.v
            obs = f.obs.masked_fill(~v, -math.inf).amax(dim=0)
            ens = f.ens.masked_fill(~v[:, None], -math.inf).amax(dim=0)
            self._fold(obs.cpu().numpy(), ens.cpu().numpy())

    def _fold(self, obs: np.ndarray, ens: np.ndarray) -> None:
        """Take the running maxima with a day's (or a batch's) maxima, -inf where not valid."""
        if self.rx_obs is None:
            self.rx_obs, self.rx_sim = np.full(obs.shape, -np.inf), np.full(ens.shape, -np.inf)
        elif self.rx_obs.shape != obs.shape:
            raise ValueError(f"grid changed from {self.rx_obs.shape} to {obs.shape}")
        np.maximum(self.rx_obs, obs, out=self.rx_obs)
        np.maximum(self.rx_sim, ens, out=self.rx_sim)

    def _merge(self, other: Rx1day) -> None:  # type: ignore[override]
        if other.rx_obs is None:
            return
        if self.rx_obs is None:
            self.rx_obs, self.rx_sim = other.rx_obs.copy(), other.rx_sim.copy()
        elif self.rx_obs.shape != other.rx_obs.shape:
            raise ValueError("cannot merge Rx1day of different grids")
        else:
            np.maximum(self.rx_obs, other.rx_obs, out=self.rx_obs)
            np.maximum(self.rx_sim, other.rx_sim, out=self.rx_sim)

    def compute(self) -> dict[str, Any]:
        if self.rx_obs is None:
            return {"Rx1day_bias": math.nan}
        seen = np.isfinite(self.rx_obs)
        return {"Rx1day_bias": _mean(self.rx_sim[:, seen].mean(axis=0) - self.rx_obs[seen])}


def quantile_bias(
    pred_values: ArrayLike, obs_values: ArrayLike, qs: Sequence[float] = (0.95, 0.99, 0.999)
) -> dict[str, dict[str, float]]:
    """Bias of high quantiles of pooled intensities (e.g. all valid pixel-days of all members vs observations).

    Parameters
    ----------
    pred_values, obs_values : any shape, mm/day; non-finite values are dropped
    qs : quantile levels in (0, 1)

    Returns
    -------
    dict
        Label (``"P95"``, ``"P99"``, ``"P99.9"``, ...) to ``{"pred", "obs", "bias", "ratio"}``: the two quantiles
        (mm/day, linear interpolation as ``numpy.quantile``), ``bias = pred - obs`` (mm/day) and ``ratio = pred /
        obs`` (NaN if obs is 0).
    """
    p, o = _f64(pred_values).ravel(), _f64(obs_values).ravel()
    p, o = p[np.isfinite(p)], o[np.isfinite(o)]
    out = {}
    for q in qs:
        qp = float(np.quantile(p, q)) if p.size else math.nan
        qo = float(np.quantile(o, q)) if o.size else math.nan
        out[_q_label(q)] = {"pred": qp, "obs": qo, "bias": qp - qo, "ratio": _div(qp, qo)}
    return out


def wet_day_frequency(field: ArrayLike, mask: ArrayLike | None = None, wet: float = 1.0) -> float:
    """Fraction of valid pixel-days with at least ``wet`` mm/day.

    Parameters
    ----------
    field : (..., H, W) mm/day (days, and members if any, are pooled)
    mask : (H, W) bool or None
    wet : float, mm/day

    Returns
    -------
    float in [0, 1]
    """
    field = _f64(field)
    v = _valid(field, mask)
    return _mean(field[v] >= wet)


def rx1day(fields: ArrayLike, mask: ArrayLike | None = None) -> np.ndarray:
    """Rx1day: the largest daily value at each pixel over the leading (time) axis, over valid pixel-days.

    Parameters
    ----------
    fields : (T, H, W) or (T, K, H, W) mm/day
    mask : bool broadcastable to ``fields`` ((H, W), or per day (T, H, W) / (T, 1, H, W)), or None

    Returns
    -------
    ndarray (H, W) or (K, H, W), mm/day; NaN where no day is valid
    """
    fields = _f64(fields)
    v = _valid(fields, mask)
    out = np.where(v, fields, -np.inf).max(axis=0)
    return np.where(v.any(axis=0), out, np.nan)


def rx1day_bias(sim: ArrayLike, obs: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Mean over valid pixels of Rx1day(sim) - Rx1day(obs), both over the same valid pixel-days: :class:`Rx1day`
    run once.

    With an ensemble each member's own Rx1day is taken, then averaged over members (the expected Rx1day of one
    simulated realisation, not of the ensemble maximum).

    Parameters
    ----------
    sim : (T, H, W) or (T, K, H, W) mm/day
    obs : (T, H, W) mm/day
    mask : (H, W) or (T, H, W) bool, or None

    Returns
    -------
    float, mm/day
    """
    sim, obs = _f64(sim), _f64(obs)
    if obs.ndim != 3:
        raise ValueError("rx1day_bias needs obs (T, H, W)")
    fields = Fields.single(sim, obs, mask) if sim.shape == obs.shape else Fields(sim, obs, mask)
    return run_once(Rx1day(), fields)["Rx1day_bias"]


ensemble_score("intensities", lambda s: Intensities(s.quantiles, s.wet))
ensemble_score("rx1day", lambda s: Rx1day())
