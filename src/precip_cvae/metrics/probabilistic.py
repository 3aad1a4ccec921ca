"""Probabilistic scores of an ensemble: CRPS (fair), threshold-weighted and block-pooled CRPS, rank histogram,
spread-skill. Each is an accumulator; the functions are the same accumulators run once (or pointwise kernels)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from precip_cvae.metrics._core import (
    Accumulator,
    DeviceFields,
    Fields,
    Sums,
    _block_pool,
    _block_pool_device,
    _check_ens,
    _crps_sorted,
    _crps_sorted_device,
    _div,
    _f64,
    _ranks,
    _valid,
    ensemble_score,
    run_once,
)


class CRPS(Sums):
    """Mean CRPS over valid points: ``CRPS`` (fair estimator of Ferro 2014 by default)."""

    def __init__(self, fair: bool = True):
        super().__init__()
        self.fair = fair

    def settings(self) -> tuple:
        return (self.fair,)

    def accum(self, f: Fields) -> None:
        if f.n:
            self.add("crps", _crps_sorted(f.xs, f.y, self.fair).sum())
            self.add("n", f.n)

    def accum_device(self, f: DeviceFields) -> None:
        """:meth:`accum` on a batch of torch tensors, where they are."""
        if f.n:
            self.add("crps", _crps_sorted_device(f.xs, f.y, self.fair).sum())
            self.add("n", f.n)

    def compute(self) -> dict[str, Any]:
        return {"CRPS": _div(self.get("crps"), self.get("n"))}


class TwCRPS(Sums):
    """Threshold-weighted CRPS with weight ``1{z >= t}`` (Allen et al. 2023: the CRPS of ``max(x, t)``), averaged over
    all valid points: ``twCRPS_<label>`` for each ``label: t`` of ``thresholds`` (mm/day)."""

    def __init__(self, thresholds: dict[str, float], fair: bool = True):
        super().__init__()
        self.thresholds = {str(k): float(v) for k, v in thresholds.items()}
        self.fair = fair

    def settings(self) -> tuple:
        return (tuple(self.thresholds.items()), self.fair)

    def accum(self, f: Fields) -> None:
        if not f.n:
            return
        self.add("n", f.n)
        top = np.maximum(f.xs[-1], f.y)
        for key, t in self.thresholds.items():
            # A point where no member and not the observation exceed t scores 0: only the others are computed
            # (for the upper-tail thresholds a few per cent of the points). max(., t) keeps the members sorted.
            tail = top > t
            xs, y = f.xs[:, tail], f.y[tail]
            self.add(key, _crps_sorted(np.maximum(xs, t), np.maximum(y, t), self.fair).sum())

    def accum_device(self, f: DeviceFields) -> None:
        """:meth:`accum` on a batch of torch tensors, where they are."""
        if not f.n:
            return
        self.add("n", f.n)
        top = f.xs[-1].maximum(f.y)
        for key, t in self.thresholds.items():
            tail = top > t
            xs, y = f.xs[:, tail], f.y[tail]
            self.add(key, _crps_sorted_device(xs.clamp_min(t), y.clamp_min(t), self.fair).sum())

    def compute(self) -> dict[str, Any]:
        return {f"twCRPS_{key}": _div(self.get(key), self.get("n")) for key in self.thresholds}


class PooledCRPS(Sums):
    """CRPS of block-pooled fields (Taillardat & Mestre 2020): ``CRPS_pool<p>_<how>`` for each block side ``p`` and
    statistic ``how`` ("mean", "max"). Observation and members are pooled over non-overlapping ``p`` x ``p`` blocks,
    over the block's valid pixels; a block counts when at least half its pixels are valid (grids that are not a
    multiple of ``p`` are padded with invalid pixels)."""

    def __init__(self, pools: Sequence[int] = (4, 16), hows: Sequence[str] = ("mean", "max"), fair: bool = True):
        super().__init__()
        self.pools, self.hows, self.fair = tuple(int(p) for p in pools), tuple(hows), fair

    def settings(self) -> tuple:
        return (self.pools, self.hows, self.fair)

    def accum(self, f: Fields) -> None:
        if not f.n:
            return
        v_members = np.expand_dims(f.v, f.ax)
        for pool in self.pools:
            pobs, keep = _block_pool(f.obs, f.v, pool, self.hows)
            pens, _ = _block_pool(f.ens, v_members, pool, self.hows)
            if not keep.any():
                continue
            for how in self.hows:
                members = np.moveaxis(pens[how], f.ax, 0)[:, keep]
                c = _crps_sorted(np.sort(members, axis=0), pobs[how][keep], self.fair)
                self.add(f"pool{pool}_{how}", c.sum())
                self.add(f"pool{pool}_{how}_n", c.size)

    def accum_device(self, f: DeviceFields) -> None:
        """:meth:`accum` on a batch of torch tensors, where they are."""
        if not f.n:
            return
        for pool in self.pools:
            pobs, keep = _block_pool_device(f.obs, f.v, pool, self.hows)
            pens, _ = _block_pool_device(f.ens, f.v[:, None], pool, self.hows)
            n = int(keep.sum())
            if not n:
                continue
            for how in self.hows:
                members = pens[how].movedim(1, 0)[:, keep]
                c = _crps_sorted_device(members.sort(dim=0).values, pobs[how][keep], self.fair)
                self.add(f"pool{pool}_{how}", c.sum())
                self.add(f"pool{pool}_{how}_n", n)

    def compute(self) -> dict[str, Any]:
        return {
            f"CRPS_pool{pool}_{how}": _div(self.get(f"pool{pool}_{how}"), self.get(f"pool{pool}_{how}_n"))
            for pool in self.pools
            for how in self.hows
        }


class RankHistogram(Accumulator):
    """Counts of the rank of the observation among the members (Talagrand diagram), ties (many dry pixels) broken
    uniformly at random: ``rank_histogram`` and its departure from flat ``rank_flatness_chi2`` / ``_p`` /
    ``_rel_dev``.

    Parameters
    ----------
    K : members
    rng_seed : with an int, the tie-breaking of a batch is seeded from it and a checksum of the batch's data, so the
        counts do not depend on how days are split among merged accumulators nor on their order
    rng : a numpy Generator used for every batch instead (one-shot use)
    """

    def __init__(self, K: int, rng_seed: int = 0, rng: np.random.Generator | None = None):
        self.K, self.rng_seed, self.rng = int(K), int(rng_seed), rng
        self.counts = np.zeros(self.K + 1, np.int64)

    def settings(self) -> tuple:
        return (self.K, self.rng_seed)

    def accum(self, f: Fields) -> None:
        if not f.n:
            return
        self.counts += np.bincount(_ranks(f.x, f.y, self._tie_rng(f.x, f.y)), minlength=self.K + 1)

    def accum_device(self, f: DeviceFields) -> None:
        """:meth:`accum` for each field of a batch of torch tensors: ranks and ties counted where they are, the ties
        broken here with the same random draws as :meth:`accum` of that field alone (seeded from its values)."""
        for i in range(f.n_fields):
            v = f.v[i]
            x, y = f.ens[i][:, v], f.obs[i][v]
            if not y.numel():
                continue
            below, ties = (x < y).sum(dim=0), (x == y).sum(dim=0)
            rng = self._tie_rng(x, y)
            ranks = below.cpu().numpy() + rng.integers(0, ties.cpu().numpy() + 1)
            self.counts += np.bincount(ranks, minlength=self.K + 1)

    def _tie_rng(self, x, y) -> np.random.Generator:
        """What breaks the ties of one batch, members ``x`` (K, n) and observations ``y`` (n,), NumPy arrays or torch
        tensors: the generator given, or one seeded from ``rng_seed`` and a checksum of the batch's values (tensors
        are copied to the host for it, and only then)."""
        if self.rng is not None:
            return self.rng
        y, x = (np.ascontiguousarray(a.cpu().numpy() if hasattr(a, "cpu") else a) for a in (y, x))
        return np.random.default_rng([self.rng_seed, zlib.crc32(y), zlib.crc32(x)])

    def _merge(self, other: RankHistogram) -> None:  # type: ignore[override]
        self.counts += other.counts

    def compute(self) -> dict[str, Any]:
        flat = rank_histogram_flatness(self.counts)
        return {
            "rank_histogram": [int(c) for c in self.counts],
            "rank_flatness_chi2": flat["chi2"],
            "rank_flatness_p": flat["p"],
            "rank_flatness_rel_dev": flat["rel_dev"],
        }


class SpreadSkill(Sums):
    """Ensemble spread against the error of the ensemble mean: ``spread = sqrt(mean unbiased member variance)``,
    ``skill = RMSE of the ensemble mean`` and ``spread_skill_ratio = spread / skill * sqrt((K+1)/K)`` (Fortin et al.
    2014: 1 for a perfect ensemble, < 1 underdispersed)."""

    def __init__(self, K: int):
        super().__init__()
        if K < 2:
            raise ValueError("spread needs at least 2 members")
        self.K = int(K)

    def settings(self) -> tuple:
        return (self.K,)

    def accum(self, f: Fields) -> None:
        if f.n:
            self.add("var", f.x.var(axis=0, ddof=1).sum())
            self.add("mean_sq", ((f.x.mean(axis=0) - f.y) ** 2).sum())
            self.add("n", f.n)

    def accum_device(self, f: DeviceFields) -> None:
        """:meth:`accum` on a batch of torch tensors, where they are."""
        if f.n:
            self.add("var", f.x.var(dim=0, correction=1).sum())
            self.add("mean_sq", ((f.x.mean(dim=0) - f.y) ** 2).sum())
            self.add("n", f.n)

    def compute(self) -> dict[str, Any]:
        n, K = self.get("n"), self.K
        spread, skill = math.sqrt(_div(self.get("var"), n)), math.sqrt(_div(self.get("mean_sq"), n))
        return {"spread": spread, "skill": skill, "spread_skill_ratio": _div(spread, skill) * math.sqrt((K + 1) / K)}


# --------------------------------------------------------------------------------------------------------------------
# pointwise kernels and one-shot functions


def crps_ensemble(ens: ArrayLike, obs: ArrayLike, mask: ArrayLike | None = None, fair: bool = True) -> np.ndarray:
    """Pointwise CRPS of an ensemble forecast.

    ``fair=True`` (default) is the unbiased estimator of Ferro (2014), the score the ensemble would get with
    infinitely many members from the same distribution:
    ``mean_i |x_i - y| - 1/(2K(K-1)) sum_{i,j} |x_i - x_j|``; ``fair=False`` uses ``1/(2K^2)`` (the CRPS of the
    empirical distribution of the members). Computed in float64 from the members sorted at each point, O(K log K).

    Parameters
    ----------
    ens : (K, H, W) or (N, K, H, W) mm/day
    obs : (H, W) or (N, H, W) mm/day
    mask : (H, W) bool or None
    fair : bool

    Returns
    -------
    ndarray, shape of ``obs``, mm/day; NaN outside the effective mask
    """
    ens, obs = _f64(ens), _f64(obs)
    ax = _check_ens(ens, obs)
    v = _valid(obs, mask, ens=ens)
    xs = np.sort(np.moveaxis(ens, ax, 0)[:, v], axis=0)  # (K, n_valid)
    out = np.full(obs.shape, np.nan)
    out[v] = _crps_sorted(xs, obs[v], fair)
    return out


def crps_mean(ens: ArrayLike, obs: ArrayLike, mask: ArrayLike | None = None, fair: bool = True) -> float:
    """Mean CRPS over valid pixels (of all fields): :class:`CRPS` run once.

    Parameters
    ----------
    ens : (K, H, W) or (N, K, H, W) mm/day
    obs : (H, W) or (N, H, W) mm/day
    mask : (H, W) bool or None
    fair : bool

    Returns
    -------
    float, mm/day
    """
    return run_once(CRPS(fair), Fields(ens, obs, mask))["CRPS"]


def twcrps_ensemble(
    ens: ArrayLike, obs: ArrayLike, threshold: float, mask: ArrayLike | None = None, fair: bool = True
) -> np.ndarray:
    """Pointwise threshold-weighted CRPS with weight ``1{z >= threshold}``.

    By Allen et al. (2023) this is the CRPS of the chained values ``v(x) = max(x, threshold)`` of members and
    observation: only errors above the threshold count.

    Parameters
    ----------
    ens : (K, H, W) or (N, K, H, W) mm/day
    obs : (H, W) or (N, H, W) mm/day
    threshold : float, mm/day
    mask : (H, W) bool or None
    fair : bool
        Fair (default) or standard estimator, as in :func:`crps_ensemble`.

    Returns
    -------
    ndarray, shape of ``obs``, mm/day; NaN outside the effective mask
    """
    ens, obs = _f64(ens), _f64(obs)
    # max() passes NaN through, so the effective mask is unchanged by the chaining.
    return crps_ensemble(np.maximum(ens, threshold), np.maximum(obs, threshold), mask, fair)


def pooled_crps(
    ens: ArrayLike,
    obs: ArrayLike,
    mask: ArrayLike | None,
    pool: int,
    how: Literal["mean", "max"] = "mean",
    fair: bool = True,
) -> float:
    """Mean CRPS of block-pooled fields: :class:`PooledCRPS` run once for one block side and statistic.

    Parameters
    ----------
    ens : (K, H, W) or (N, K, H, W) mm/day
    obs : (H, W) or (N, H, W) mm/day
    mask : (H, W) bool or None
    pool : int, block side in pixels
    how : "mean" or "max"
    fair : bool

    Returns
    -------
    float, mm/day (NaN when no block is kept)
    """
    if how not in ("mean", "max"):
        raise ValueError(f"how must be 'mean' or 'max', got {how!r}")
    return run_once(PooledCRPS((pool,), (how,), fair), Fields(ens, obs, mask))[f"CRPS_pool{pool}_{how}"]


def rank_histogram(
    ens: ArrayLike,
    obs: ArrayLike,
    mask: ArrayLike | None = None,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Counts of the rank of the observation among the members: :class:`RankHistogram` run once.

    A rank is the number of members below the observation plus, when members equal the observation (dry pixels),
    a uniform random share of the ties, so a calibrated ensemble gets a flat histogram even with many zeros.

    Parameters
    ----------
    ens : (K, H, W) or (N, K, H, W) mm/day
    obs : (H, W) or (N, H, W) mm/day
    mask : (H, W) bool or None
    rng : numpy Generator, seed or None (fresh entropy)

    Returns
    -------
    ndarray (K+1,) int64 counts
    """
    f = Fields(ens, obs, mask)
    return np.array(run_once(RankHistogram(f.K, rng=np.random.default_rng(rng)), f)["rank_histogram"], np.int64)


def rank_histogram_flatness(counts: ArrayLike) -> dict[str, float]:
    """Departure of a rank histogram from flat.

    Parameters
    ----------
    counts : (K+1,) counts

    Returns
    -------
    dict
        ``chi2``: Pearson chi-square statistic against equal expected counts; ``p``: its p-value with K degrees of
        freedom; ``rel_dev``: the largest ``|count / expected - 1|``. All NaN for an empty histogram.
    """
    counts = _f64(counts)
    total = counts.sum()
    if total <= 0 or counts.size < 2:
        return {"chi2": math.nan, "p": math.nan, "rel_dev": math.nan}
    expected = total / counts.size
    chi2 = float(((counts - expected) ** 2).sum() / expected)
    return {
        "chi2": chi2,
        "p": float(stats.chi2.sf(chi2, counts.size - 1)),
        "rel_dev": float(np.abs(counts / expected - 1.0).max()),
    }


def spread_skill(ens: ArrayLike, obs: ArrayLike, mask: ArrayLike | None = None) -> dict[str, float]:
    """Ensemble spread against the error of the ensemble mean: :class:`SpreadSkill` run once.

    Parameters
    ----------
    ens : (K, H, W) or (N, K, H, W) mm/day, K >= 2
    obs : (H, W) or (N, H, W) mm/day
    mask : (H, W) bool or None

    Returns
    -------
    dict with ``spread`` and ``skill`` (mm/day) and ``ratio``
    """
    f = Fields(ens, obs, mask)
    out = run_once(SpreadSkill(f.K), f)
    return {"spread": out["spread"], "skill": out["skill"], "ratio": out["spread_skill_ratio"]}


ensemble_score("crps", lambda s: CRPS())
ensemble_score("twcrps", lambda s: TwCRPS(s.thresholds))
ensemble_score("pooled_crps", lambda s: PooledCRPS(s.pools))
ensemble_score("spread_skill", lambda s: SpreadSkill(s.K))
ensemble_score("rank_histogram", lambda s: RankHistogram(s.K, s.rng_seed))
