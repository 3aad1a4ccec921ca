"""What every score shares: array conventions, the effective mask, sorted members, and the accumulator protocol.

Conventions
-----------
- Fields are precipitation in mm/day. ``obs`` is ``(H, W)`` or ``(N, H, W)``; an ensemble ``ens`` has its members on
  the axis just before the two spatial axes: ``(K, H, W)`` or ``(N, K, H, W)``. A single prediction ``pred`` has the
  shape of ``obs`` (it is scored as an ensemble of one member).
- ``mask`` is a boolean array broadcastable to ``obs`` (normally ``(H, W)``), True on valid pixels; ``None`` means
  every pixel. The *effective* mask of every metric is ``mask & isfinite(obs) & isfinite(prediction)`` (for an
  ensemble: every member finite), so a pixel-day where the observation or any member is missing never counts.
- Thresholds are in mm/day; an event (exceedance) is ``value >= threshold``.
- Undefined scores (no valid pixel, no event, a zero denominator) are NaN, never an exception.

Accumulators (the pysteps pattern): a score is a class whose constructor is ``init``, with ``accum(fields)``
(add days), ``merge(other)`` (add another accumulator's days) and ``compute()`` (a dict of named values). Its
one-shot function is the accumulator run once over the given arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def _f64(x: ArrayLike) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _member_axis(obs: np.ndarray) -> int:
    # Members sit just before the two spatial axes; for 0-d or 1-d observations they lead.
    return max(obs.ndim - 2, 0)


def _check_ens(ens: np.ndarray, obs: np.ndarray) -> int:
    """The member axis of ``ens`` after checking that ``ens`` is ``obs`` with one extra (member) axis."""
    ax = _member_axis(obs)
    if ens.ndim != obs.ndim + 1 or ens.shape[:ax] + ens.shape[ax + 1 :] != obs.shape:
        raise ValueError(f"ensemble shape {ens.shape} does not match observations {obs.shape} (+ a member axis)")
    return ax


def _check_same(pred: np.ndarray, obs: np.ndarray) -> None:
    if pred.shape != obs.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from observations {obs.shape}")


def _valid(obs: np.ndarray, mask: ArrayLike | None, *preds: np.ndarray, ens: np.ndarray | None = None) -> np.ndarray:
    """Effective mask: ``mask`` & finite ``obs`` & finite predictions (all members of ``ens``), shape of ``obs``."""
    valid = np.isfinite(obs)
    if mask is not None:
        valid = valid & np.broadcast_to(np.asarray(mask, dtype=bool), obs.shape)
    for p in preds:
        valid = valid & np.isfinite(p)
    if ens is not None:
        valid = valid & np.isfinite(ens).all(axis=_member_axis(obs))
    return valid


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else math.nan


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else math.nan


def _crps_sorted(xs: np.ndarray, y: np.ndarray, fair: bool) -> np.ndarray:
    """CRPS of ensembles sorted ascending along axis 0, ``xs`` (K, ...), against ``y`` (...), in O(K) per point.

    With 0-based ranks i, sum_{i<j} |x_(i) - x_(j)| = sum_i (2i - K + 1) x_(i), so the double sum over pairs never has
    to be formed.
    """
    K = xs.shape[0]
    if fair and K < 2:
        raise ValueError("the fair CRPS needs at least 2 members")
    term1 = np.abs(xs - y).mean(axis=0)
    weights = (2.0 * np.arange(K) - K + 1).reshape((K,) + (1,) * y.ndim)
    pairs = (weights * xs).sum(axis=0)  # sum over i<j; the full double sum is twice this
    return term1 - pairs / (K * (K - 1) if fair else K * K)


def _q_label(q: float) -> str:
    return f"P{round(q * 100, 6):g}"


def _block_pool(
    x: np.ndarray, valid: np.ndarray, pool: int, hows: tuple[str, ...] = ("mean", "max")
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pool the two trailing axes of ``x`` over non-overlapping ``pool`` x ``pool`` blocks, over valid pixels only,
    by each statistic of ``hows`` ("mean", "max").

    ``valid`` broadcasts against ``x``. The grid is padded with invalid pixels to a multiple of ``pool``. Returns the
    pooled values by statistic (NaN in dropped blocks) and the blocks kept, in ``valid``'s shape: those with at least
    half of their ``pool**2`` pixels valid. Valid counts are taken on ``valid`` as given (e.g. one (H, W) mask for
    all members), not on its broadcast.
    """
    unknown = set(hows) - {"mean", "max"}
    if unknown:
        raise ValueError(f"how must be 'mean' or 'max', got {sorted(unknown)}")
    valid = np.asarray(valid, dtype=bool)
    H, W = x.shape[-2:]
    rows, cols = np.arange(0, H, pool), np.arange(0, W, pool)

    def reduce(ufunc: np.ufunc, a: np.ndarray) -> np.ndarray:
        # reduceat takes each block's contiguous run (the last one may be short: the padding of invalid pixels)
        return ufunc.reduceat(ufunc.reduceat(a, cols, axis=-1), rows, axis=-2)

    count = reduce(np.add, valid.astype(np.int64))
    keep = 2 * count >= pool * pool
    out = {}
    for how in hows:
        if how == "mean":
            value = reduce(np.add, np.where(valid, x, 0.0)) / np.maximum(count, 1)
        else:
            value = reduce(np.maximum, np.where(valid, x, -np.inf))
        out[how] = np.where(keep, value, np.nan)
    return out, keep


def _block_pool_device(x, valid, pool: int, hows: tuple[str, ...] = ("mean", "max")) -> tuple[dict, Any]:
    """:func:`_block_pool` on torch tensors (``valid`` a bool tensor broadcastable to ``x``, counted as given)."""
    import torch
    import torch.nn.functional as F

    H, W = x.shape[-2:]
    pad = (0, -W % pool, 0, -H % pool)  # invalid pixels at the end of each axis

    def blocks(a, fill: float):  # (..., H, W) -> (..., H / pool, pool, W / pool, pool), padded with ``fill``
        a = F.pad(a, pad, value=fill)
        return a.reshape(*a.shape[:-2], a.shape[-2] // pool, pool, a.shape[-1] // pool, pool)

    count = blocks(valid.to(torch.int64), 0).sum(dim=(-3, -1))
    keep = 2 * count >= pool * pool
    out = {}
    for how in hows:
        if how == "mean":
            value = blocks(torch.where(valid, x, 0.0), 0.0).sum(dim=(-3, -1)) / count.clamp(min=1)
        elif how == "max":
            value = blocks(torch.where(valid, x, -math.inf), -math.inf).amax(dim=(-3, -1))
        else:
            raise ValueError(f"how must be 'mean' or 'max', got {how!r}")
        out[how] = torch.where(keep, value, math.nan)
    return out, keep


def _ranks(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank (0..K) of ``y`` (n,) among members ``x`` (K, n); ties (many zeros) broken uniformly at random."""
    below = (x < y).sum(axis=0)
    ties = (x == y).sum(axis=0)
    return below + rng.integers(0, ties + 1)


_CELLS = ("hits", "misses", "false_alarms", "correct_negatives")


def _table(pred_event: np.ndarray, obs_event: np.ndarray) -> dict[str, int]:
    return {
        "hits": int((pred_event & obs_event).sum()),
        "misses": int((~pred_event & obs_event).sum()),
        "false_alarms": int((pred_event & ~obs_event).sum()),
        "correct_negatives": int((~pred_event & ~obs_event).sum()),
    }


def _table_device(pred_event, obs_event) -> dict[str, int]:
    """:func:`_table` on torch tensors (one transfer of the four counts)."""
    import torch

    counts = torch.stack([(pred_event & obs_event).sum(), (~pred_event & obs_event).sum(),
                          (pred_event & ~obs_event).sum(), (~pred_event & ~obs_event).sum()])  # fmt: skip
    return dict(zip(_CELLS, (int(c) for c in counts.tolist()), strict=True))


class Fields:
    """One batch of forecast-observation pairs, with what several scores need computed once.

    Parameters
    ----------
    ens : (..., K, H, W) mm/day, members just before the spatial axes (0-d/1-d observations: members lead)
    obs : (..., H, W) mm/day
    mask : bool broadcastable to ``obs``, or None
    """

    def __init__(self, ens: ArrayLike, obs: ArrayLike, mask: ArrayLike | None = None):
        self.ens, self.obs = _f64(ens), _f64(obs)
        self.ax = _check_ens(self.ens, self.obs)
        self.K = int(self.ens.shape[self.ax])
        self.v = _valid(self.obs, mask, ens=self.ens)

    @classmethod
    def single(cls, pred: ArrayLike, obs: ArrayLike, mask: ArrayLike | None = None) -> Fields:
        """A single prediction as an ensemble of one member."""
        pred, obs = _f64(pred), _f64(obs)
        _check_same(pred, obs)
        return cls(np.expand_dims(pred, _member_axis(obs)), obs, mask)

    @property
    def n(self) -> int:
        """Valid points."""
        return int(self.v.sum())

    @property
    def n_fields(self) -> int:
        """Fields (days) in the batch: the product of the axes before the two spatial ones (1 for 0-d/1-d)."""
        return int(np.prod(self.obs.shape[:-2])) if self.obs.ndim >= 2 else 1

    @cached_property
    def x(self) -> np.ndarray:
        """(K, n) member values at the valid points."""
        return np.moveaxis(self.ens, self.ax, 0)[:, self.v]

    @cached_property
    def y(self) -> np.ndarray:
        """(n,) observations at the valid points."""
        return self.obs[self.v]

    @cached_property
    def xs(self) -> np.ndarray:
        """(K, n) members sorted at each valid point."""
        return np.sort(self.x, axis=0)

    @cached_property
    def median(self) -> np.ndarray:
        """(n,) pixelwise ensemble median (the mean of the two middle members for even K)."""
        K = self.K
        return 0.5 * (self.xs[(K - 1) // 2] + self.xs[K // 2])

    def fields(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(ens (K, H, W), obs (H, W), valid (H, W)) of each field, for scores defined field by field."""
        if self.obs.ndim < 2:
            return [(np.moveaxis(self.ens, self.ax, 0), self.obs, self.v)]
        H, W = self.obs.shape[-2:]
        ens = np.moveaxis(self.ens, self.ax, -3).reshape(-1, self.K, H, W)
        return list(zip(ens, self.obs.reshape(-1, H, W), self.v.reshape(-1, H, W), strict=True))


class DeviceFields:
    """A batch of fields as torch tensors, scored where they are (on the model's device, in float64): the torch twin
    of :class:`Fields` for the accumulators that have ``accum_device`` (those validation needs). Same effective mask
    and the same properties, as tensors.

    Parameters
    ----------
    ens : (N, K, H, W) mm/day
    obs : (N, H, W) mm/day
    mask : bool tensor broadcastable to ``obs``, or None
    """

    def __init__(self, ens, obs, mask=None):
        import torch

        if ens.ndim != 4 or obs.ndim != 3 or ens.shape[:1] + ens.shape[2:] != obs.shape:
            raise ValueError(f"ensemble shape {tuple(ens.shape)} does not match observations {tuple(obs.shape)} "
                             "(expected (N, K, H, W) and (N, H, W))")  # fmt: skip
        self.ens, self.obs = ens.to(torch.float64), obs.to(torch.float64)
        self.K = int(ens.shape[1])
        valid = torch.isfinite(self.obs) & torch.isfinite(self.ens).all(dim=1)
        if mask is not None:
            valid = valid & mask.to(device=valid.device, dtype=torch.bool).expand_as(valid)
        self.v = valid

    @cached_property
    def n(self) -> int:
        return int(self.v.sum())

    @property
    def n_fields(self) -> int:
        return int(self.obs.shape[0])

    @cached_property
    def x(self):
        """(K, n) member values at the valid points."""
        return self.ens.movedim(1, 0)[:, self.v]

    @cached_property
    def y(self):
        return self.obs[self.v]

    @cached_property
    def xs(self):
        return self.x.sort(dim=0).values

    @cached_property
    def median(self):
        K = self.K
        return 0.5 * (self.xs[(K - 1) // 2] + self.xs[K // 2])


def _crps_sorted_device(xs, y, fair: bool):
    """:func:`_crps_sorted` on torch tensors."""
    import torch

    K = xs.shape[0]
    if fair and K < 2:
        raise ValueError("the fair CRPS needs at least 2 members")
    term1 = (xs - y).abs().mean(dim=0)
    weights = (2.0 * torch.arange(K, dtype=xs.dtype, device=xs.device) - K + 1).reshape((K,) + (1,) * y.ndim)
    pairs = (weights * xs).sum(dim=0)
    return term1 - pairs / (K * (K - 1) if fair else K * K)


class Accumulator:
    """A streaming score: ``accum`` days, ``merge`` accumulators of the same settings, ``compute`` named values."""

    def settings(self) -> tuple:
        """What two accumulators must share to merge."""
        return ()

    def accum(self, f: Fields) -> None:
        raise NotImplementedError

    def merge(self, other: Accumulator) -> None:
        if type(other) is not type(self) or other.settings() != self.settings():
            raise ValueError(f"cannot merge {type(self).__name__} with different settings")
        self._merge(other)

    def _merge(self, other: Accumulator) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:
        raise NotImplementedError


class Sums(Accumulator):
    """An accumulator whose state is named float sums (merged by addition)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}

    def add(self, name: str, value: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value)

    def get(self, name: str) -> float:
        return self.sums.get(name, 0.0)

    def _merge(self, other: Sums) -> None:  # type: ignore[override]
        for name, value in other.sums.items():
            self.add(name, value)


def run_once(accumulator: Accumulator, f: Fields) -> dict[str, Any]:
    """The one-shot form of a score: its accumulator over ``f`` alone."""
    accumulator.accum(f)
    return accumulator.compute()


class Mean(Sums):
    """Weighted mean of values computed elsewhere (e.g. a CRPS from quantile predictions), under ``name``."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def settings(self) -> tuple:
        return (self.name,)

    def accum(self, value: float, weight: float = 1.0) -> None:  # type: ignore[override]
        self.add("total", value * weight)
        self.add("weight", weight)

    def compute(self) -> dict[str, Any]:
        return {self.name: _div(self.get("total"), self.get("weight"))}


@dataclass(frozen=True)
class EnsembleSettings:
    """What the accumulators of an ensemble evaluation are built from (see
    :class:`~precip_cvae.metrics.scores.EnsembleScores`)."""

    K: int
    thresholds: dict[str, float]
    pools: tuple[int, ...] = (4, 16)
    fss_windows: tuple[int, ...] = (1, 5, 11)
    quantiles: tuple[float, ...] = (0.95, 0.99, 0.999)
    wet: float = 1.0
    rng_seed: int = 0


#: The scores of an ensemble evaluation, by name, in the order of metrics.json: each metrics module registers its own
#: accumulators here, so a new score is one class and one :func:`ensemble_score` line in one module.
ENSEMBLE_SCORES: dict[str, Callable[[EnsembleSettings], Accumulator]] = {}


def ensemble_score(name: str, build: Callable[[EnsembleSettings], Accumulator]) -> None:
    """Register an accumulator that :class:`~precip_cvae.metrics.scores.EnsembleScores` computes, under ``name``."""
    ENSEMBLE_SCORES[name] = build
