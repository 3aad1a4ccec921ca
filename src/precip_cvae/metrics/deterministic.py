"""Deterministic scores of a point prediction, or of an ensemble's pixelwise median: MAE, MAE above a threshold,
RMSE, mass bias. One accumulator; the functions are that accumulator run once on a single prediction."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from precip_cvae.metrics._core import DeviceFields, Fields, Sums, _div, ensemble_score, run_once


class Deterministic(Sums):
    """Scores of the pixelwise ensemble median (the prediction itself for one member), over valid points.

    ``MAE_all``, ``RMSE_all``; ``MAE_tail``: where the observation is at or above ``tail`` mm/day; ``mass_bias``: mean
    over fields of (spatial mean of the prediction - spatial mean of the observation) over the same valid pixels;
    ``MAE_member``: the MAE of one member, averaged over members.

    Parameters
    ----------
    tail : float, mm/day, or None (then ``MAE_tail`` is NaN)
    """

    def __init__(self, tail: float | None = None):
        super().__init__()
        self.tail = None if tail is None else float(tail)

    def settings(self) -> tuple:
        return (self.tail,)

    def accum(self, f: Fields) -> None:
        if not f.n:
            return
        err = f.median - f.y
        self.add("n", f.n)
        self.add("abs", np.abs(err).sum())
        self.add("sq", (err**2).sum())
        if self.tail is not None:
            tail = f.y >= self.tail
            self.add("tail_abs", np.abs(err[tail]).sum())
            self.add("tail_n", tail.sum())
        self.add("member_abs", np.abs(f.x - f.y).sum())
        self.add("member_n", f.x.size)
        # mass bias field by field (a field without a valid pixel is skipped)
        full = np.zeros(f.obs.shape)
        full[f.v] = err
        sums, counts = full.reshape(f.n_fields, -1).sum(axis=1), f.v.reshape(f.n_fields, -1).sum(axis=1)
        keep = counts > 0
        self.add("mass", (sums[keep] / counts[keep]).sum())
        self.add("mass_fields", keep.sum())

    def accum_device(self, f: DeviceFields) -> None:
        """:meth:`accum` on a batch of torch tensors, where they are."""
        if not f.n:
            return
        err = f.median - f.y
        self.add("n", f.n)
        self.add("abs", err.abs().sum())
        self.add("sq", (err**2).sum())
        if self.tail is not None:
            tail = f.y >= self.tail
            self.add("tail_abs", err[tail].abs().sum())
            self.add("tail_n", tail.sum())
        self.add("member_abs", (f.x - f.y).abs().sum())
        self.add("member_n", f.x.numel())
        full = f.obs.new_zeros(f.obs.shape)
        full[f.v] = err
        sums, counts = full.reshape(f.n_fields, -1).sum(dim=1), f.v.reshape(f.n_fields, -1).sum(dim=1)
        keep = counts > 0
        self.add("mass", (sums[keep] / counts[keep]).sum())
        self.add("mass_fields", keep.sum())

    def compute(self) -> dict[str, Any]:
        n = self.get("n")
        return {
            "MAE_all": _div(self.get("abs"), n),
            "MAE_tail": _div(self.get("tail_abs"), self.get("tail_n")),
            "RMSE_all": math.sqrt(_div(self.get("sq"), n)),
            "mass_bias": _div(self.get("mass"), self.get("mass_fields")),
            "MAE_member": _div(self.get("member_abs"), self.get("member_n")),
        }


def _once(pred: ArrayLike, obs: ArrayLike, mask: ArrayLike | None, tail: float | None = None) -> dict[str, Any]:
    return run_once(Deterministic(tail), Fields.single(pred, obs, mask))


def mae(pred: ArrayLike, obs: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Mean absolute error over valid pixels (of all fields).

    Parameters
    ----------
    pred, obs : (..., H, W) mm/day
    mask : (H, W) bool or None

    Returns
    -------
    float, mm/day (NaN without a valid pixel)
    """
    return _once(pred, obs, mask)["MAE_all"]


def rmse(pred: ArrayLike, obs: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Root-mean-square error over valid pixels (of all fields).

    Parameters
    ----------
    pred, obs : (..., H, W) mm/day
    mask : (H, W) bool or None

    Returns
    -------
    float, mm/day
    """
    return _once(pred, obs, mask)["RMSE_all"]


def mae_tail(pred: ArrayLike, obs: ArrayLike, mask: ArrayLike | None, threshold: float) -> float:
    """Mean absolute error over valid pixels where the observation is at or above ``threshold``.

    Parameters
    ----------
    pred, obs : (..., H, W) mm/day
    mask : (H, W) bool or None
    threshold : float, mm/day

    Returns
    -------
    float, mm/day (NaN when no observation reaches the threshold)
    """
    return _once(pred, obs, mask, threshold)["MAE_tail"]


def mass_bias(pred: ArrayLike, obs: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Mean over fields of (spatial mean of ``pred`` - spatial mean of ``obs``), both over the same valid pixels.

    Parameters
    ----------
    pred, obs : (H, W) or (N, H, W) mm/day
    mask : (H, W) bool or None

    Returns
    -------
    float, mm/day (fields without a valid pixel are skipped)
    """
    return _once(pred, obs, mask)["mass_bias"]


ensemble_score("deterministic", lambda s: Deterministic(tail=s.thresholds["P95"]))
