"""Verification metrics for daily precipitation: pure functions on numpy arrays, and a streaming accumulator.

Conventions
-----------
- Fields are precipitation in mm/day. ``obs`` is ``(H, W)`` or ``(N, H, W)``; an ensemble ``ens`` has its members on
  the axis just before the two spatial axes: ``(K, H, W)`` or ``(N, K, H, W)``. A single prediction ``pred`` has the
  shape of ``obs``.
- ``mask`` is a boolean array broadcastable to ``obs`` (normally ``(H, W)``), True on valid pixels; ``None`` means
  every pixel. The *effective* mask of every metric is ``mask & isfinite(obs) & isfinite(prediction)`` (for an
  ensemble: every member finite), so a pixel-day where the observation or any member is missing never counts.
- Thresholds are in mm/day; an event (exceedance) is ``value >= threshold``.
- Undefined scores (no valid pixel, no event, a zero denominator) are NaN, never an exception.

:class:`EnsembleScores` accumulates, one day at a time, everything the evaluation needs for one ensemble system, with
memory independent of the number of days, and can merge with another accumulator (e.g. one per worker).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from scipy.ndimage import uniform_filter

__all__ = [
    "EnsembleScores",
    "LogHistogram",
    "contingency",
    "crps_ensemble",
    "crps_mean",
    "csi",
    "fss",
    "mae",
    "mae_tail",
    "mass_bias",
    "pooled_crps",
    "quantile_bias",
    "rank_histogram",
    "rank_histogram_flatness",
    "rapsd",
    "rmse",
    "rx1day",
    "rx1day_bias",
    "sedi",
    "spectrum_log_ratio",
    "spread_skill",
    "twcrps_ensemble",
    "wet_day_frequency",
]

#: Wavelength bands of :func:`spectrum_log_ratio` used by :class:`EnsembleScores`, in cycles per pixel:
#: large scales (wavelength > 16 px), medium (4-16 px), small (< 4 px).
SPECTRAL_BANDS: tuple[tuple[float, float], ...] = ((0.0, 1 / 16), (1 / 16, 1 / 4), (1 / 4, math.inf))


# --------------------------------------------------------------------------------------------------------------------
# helpers


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


# --------------------------------------------------------------------------------------------------------------------
# deterministic scores of a single prediction


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
    pred, obs = _f64(pred), _f64(obs)
    _check_same(pred, obs)
    v = _valid(obs, mask, pred)
    return _mean(np.abs(pred[v] - obs[v]))


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
    pred, obs = _f64(pred), _f64(obs)
    _check_same(pred, obs)
    v = _valid(obs, mask, pred)
    return math.sqrt(_mean((pred[v] - obs[v]) ** 2))


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
    pred, obs = _f64(pred), _f64(obs)
    _check_same(pred, obs)
    v = _valid(obs, mask, pred)
    v &= obs >= threshold
    return _mean(np.abs(pred[v] - obs[v]))


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
    pred, obs = _f64(pred), _f64(obs)
    _check_same(pred, obs)
    v = _valid(obs, mask, pred)
    n_fields = int(np.prod(obs.shape[:-2])) if obs.ndim >= 2 else 1
    v2 = v.reshape(n_fields, -1)
    diff = np.where(v, pred - obs, 0.0).reshape(n_fields, -1).sum(axis=1)
    n = v2.sum(axis=1)
    keep = n > 0
    return _mean(diff[keep] / n[keep])


# --------------------------------------------------------------------------------------------------------------------
# probabilistic scores of an ensemble


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
    """Mean of :func:`crps_ensemble` over valid pixels (of all fields).

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
    c = crps_ensemble(ens, obs, mask, fair)
    return _mean(c[np.isfinite(c)])


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


def _block_pool(x: np.ndarray, valid: np.ndarray, pool: int, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Pool the two trailing axes of ``x`` over non-overlapping ``pool`` x ``pool`` blocks, over valid pixels only.

    ``valid`` broadcasts against ``x``. The grid is padded with invalid pixels to a multiple of ``pool``. Returns the
    pooled values and the blocks kept: those with at least half of their ``pool**2`` pixels valid.
    """
    if how not in ("mean", "max"):
        raise ValueError(f"how must be 'mean' or 'max', got {how!r}")
    valid = np.broadcast_to(valid, x.shape)
    H, W = x.shape[-2:]
    pad = [(0, 0)] * (x.ndim - 2) + [(0, -H % pool), (0, -W % pool)]
    x, valid = np.pad(x, pad), np.pad(valid, pad)
    Hb, Wb = x.shape[-2] // pool, x.shape[-1] // pool
    blocks = x.shape[:-2] + (Hb, pool, Wb, pool)
    x, valid = x.reshape(blocks), valid.reshape(blocks)
    count = valid.sum(axis=(-3, -1))
    if how == "mean":
        value = np.where(valid, x, 0.0).sum(axis=(-3, -1)) / np.maximum(count, 1)
    else:
        value = np.where(valid, x, -np.inf).max(axis=(-3, -1))
    keep = 2 * count >= pool * pool
    return np.where(keep, value, np.nan), keep


def pooled_crps(
    ens: ArrayLike,
    obs: ArrayLike,
    mask: ArrayLike | None,
    pool: int,
    how: Literal["mean", "max"] = "mean",
    fair: bool = True,
) -> float:
    """Mean CRPS of block-pooled fields: a score of the ensemble's spatial structure (Taillardat & Mestre 2020).

    Observation and every member are pooled (block mean or block maximum) over non-overlapping ``pool`` x ``pool``
    blocks, the statistic taken over the block's valid pixels (the same for observation and members). A block is
    kept when at least half of its ``pool**2`` pixels are valid; edge blocks of a grid that is not a multiple of
    ``pool`` count their missing pixels as invalid.

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
    ens, obs = _f64(ens), _f64(obs)
    ax = _check_ens(ens, obs)
    v = _valid(obs, mask, ens=ens)
    pobs, keep = _block_pool(obs, v, pool, how)
    pens, _ = _block_pool(ens, np.expand_dims(v, ax), pool, how)
    c = crps_ensemble(pens, pobs, keep, fair)
    return _mean(c[keep])


def _ranks(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank (0..K) of ``y`` (n,) among members ``x`` (K, n); ties (many zeros) broken uniformly at random."""
    below = (x < y).sum(axis=0)
    ties = (x == y).sum(axis=0)
    return below + rng.integers(0, ties + 1)


def rank_histogram(
    ens: ArrayLike,
    obs: ArrayLike,
    mask: ArrayLike | None = None,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Counts of the rank of the observation among the members (Talagrand diagram).

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
    ens, obs = _f64(ens), _f64(obs)
    ax = _check_ens(ens, obs)
    K = ens.shape[ax]
    v = _valid(obs, mask, ens=ens)
    ranks = _ranks(np.moveaxis(ens, ax, 0)[:, v], obs[v], np.random.default_rng(rng))
    return np.bincount(ranks, minlength=K + 1).astype(np.int64)


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
    """Ensemble spread against the error of the ensemble mean.

    ``spread = sqrt(mean of the unbiased (ddof=1) member variance)``, ``skill = RMSE of the ensemble mean``, and
    ``ratio = spread / skill * sqrt((K+1)/K)``: with the finite-K correction of Fortin et al. (2014) a perfect
    ensemble (members and observation exchangeable) has a ratio of 1, < 1 is underdispersed.

    Parameters
    ----------
    ens : (K, H, W) or (N, K, H, W) mm/day, K >= 2
    obs : (H, W) or (N, H, W) mm/day
    mask : (H, W) bool or None

    Returns
    -------
    dict with ``spread`` and ``skill`` (mm/day) and ``ratio``
    """
    ens, obs = _f64(ens), _f64(obs)
    ax = _check_ens(ens, obs)
    K = ens.shape[ax]
    if K < 2:
        raise ValueError("spread needs at least 2 members")
    v = _valid(obs, mask, ens=ens)
    x = np.moveaxis(ens, ax, 0)[:, v]
    spread = math.sqrt(_mean(x.var(axis=0, ddof=1)))
    skill = math.sqrt(_mean((x.mean(axis=0) - obs[v]) ** 2))
    return {"spread": spread, "skill": skill, "ratio": _div(spread, skill) * math.sqrt((K + 1) / K)}


# --------------------------------------------------------------------------------------------------------------------
# spatial structure


@lru_cache(maxsize=16)
def _radial_bins(H: int, W: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For an H x W FFT grid: frequencies of the radial bins, the flat indices of the kept coefficients sorted by
    bin, the start of each bin in that order, and the coefficient count per bin (all > 0)."""
    L = max(H, W)
    fy, fx = np.meshgrid(np.fft.fftfreq(H), np.fft.fftfreq(W), indexing="ij")
    k = np.rint(np.hypot(fy, fx) * L).astype(np.int64).ravel()  # bins of width 1/L centred on k/L
    n_bins = L // 2
    sel = np.flatnonzero((k >= 1) & (k <= n_bins))  # drop the mean and the corners beyond 0.5 cycles/px
    order = sel[np.argsort(k[sel], kind="stable")]
    sorted_k = k[order]
    starts = np.searchsorted(sorted_k, np.arange(1, n_bins + 1))
    counts = np.diff(np.append(starts, sorted_k.size))
    freqs = np.arange(1, n_bins + 1) / L
    for a in (freqs, order, starts, counts):
        a.flags.writeable = False
    return freqs, order, starts, counts


def rapsd(field: ArrayLike, fill: Literal["mean", "zero"] = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectral density.

    Non-finite pixels (outside the domain) are filled with the field's mean over its finite pixels (``fill="mean"``,
    default: the smallest step at the domain's edge, so the least spurious small-scale power) or with 0 mm/day.
    Power is ``|FFT|^2 / (H W)`` (white noise of variance s^2 has power s^2 at every frequency), averaged over the
    coefficients whose radial frequency ``sqrt(fx^2 + fy^2)`` falls in bins of width ``1/max(H, W)`` centred on
    ``k/max(H, W)``, k = 1 .. max(H, W)//2; the zero frequency and the corners beyond 0.5 are left out.

    Parameters
    ----------
    field : (..., H, W) mm/day; leading axes are independent fields
    fill : "mean" or "zero"

    Returns
    -------
    freqs : (n_bins,) cycles per pixel, in (0, 0.5]
    power : (..., n_bins) (mm/day)^2
    """
    x = _f64(field)
    H, W = x.shape[-2:]
    finite = np.isfinite(x)
    if fill == "mean":
        n = finite.sum(axis=(-2, -1), keepdims=True)
        total = np.where(finite, x, 0.0).sum(axis=(-2, -1), keepdims=True)
        value = total / np.maximum(n, 1)  # an all-missing field becomes 0
    elif fill == "zero":
        value = 0.0
    else:
        raise ValueError(f"fill must be 'mean' or 'zero', got {fill!r}")
    x = np.where(finite, x, value)
    power = (np.abs(np.fft.fft2(x)) ** 2 / (H * W)).reshape(*x.shape[:-2], H * W)
    freqs, order, starts, counts = _radial_bins(H, W)
    if freqs.size == 0:
        return freqs.copy(), np.zeros(x.shape[:-2] + (0,))
    return freqs.copy(), np.add.reduceat(power[..., order], starts, axis=-1) / counts


def spectrum_log_ratio(
    sim_power: ArrayLike, obs_power: ArrayLike, freqs: ArrayLike, bands: Iterable[tuple[float, float]]
) -> list[float]:
    """Mean of ``log10(sim / obs)`` over the frequencies of each band: 0 = right amount of variance at those scales.

    Parameters
    ----------
    sim_power, obs_power : (n_bins,) power spectra, as from :func:`rapsd`
    freqs : (n_bins,) cycles per pixel
    bands : sequence of (f_lo, f_hi), cycles per pixel; a band holds ``f_lo <= f < f_hi``

    Returns
    -------
    list of float, one per band (NaN for a band without a frequency with positive power in both)
    """
    sim, obs, freqs = _f64(sim_power), _f64(obs_power), _f64(freqs)
    ok = (sim > 0) & (obs > 0) & np.isfinite(sim) & np.isfinite(obs)
    log_ratio = np.log10(np.where(ok, sim, 1.0) / np.where(ok, obs, 1.0))
    return [_mean(log_ratio[ok & (freqs >= lo) & (freqs < hi)]) for lo, hi in bands]


def _fractions(binary: np.ndarray, window: int) -> np.ndarray:
    # Only the two spatial axes are smoothed; zero padding: outside the grid there are no events.
    size = (1,) * (binary.ndim - 2) + (window, window)
    return uniform_filter(binary, size=size, mode="constant", cval=0.0)


def _fss_terms(pf: np.ndarray, po: np.ndarray, valid: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-field FSS numerator sum((Ff - Fo)^2) and reference sum(Ff^2 + Fo^2) over valid pixels."""
    ff, fo = _fractions(pf, window), _fractions(po, window)
    num = np.where(valid, (ff - fo) ** 2, 0.0).sum(axis=(-2, -1))
    den = np.where(valid, ff**2 + fo**2, 0.0).sum(axis=(-2, -1))
    return num, den


def fss(
    pred: ArrayLike,
    obs: ArrayLike,
    threshold: float,
    window: int,
    mask: ArrayLike | None = None,
    probabilistic: bool = False,
    aggregate: Literal["mean", "sums"] = "mean",
) -> float:
    """Fractions Skill Score (Roberts & Lean 2008) of exceeding ``threshold``.

    Both fields become binary exceedance fields (``value >= threshold``; with ``probabilistic=True`` ``pred`` is
    already a probability field in [0, 1], e.g. the fraction of members exceeding, and is used as is). Fractions are
    box means over ``window`` x ``window`` pixels (``scipy.ndimage.uniform_filter``, zero padding); invalid pixels
    count as 0 in both fields and are left out of the sums. ``FSS = 1 - sum (Ff - Fo)^2 / sum (Ff^2 + Fo^2)``.

    Parameters
    ----------
    pred : (..., H, W) mm/day, or probability in [0, 1] if ``probabilistic``
    obs : (..., H, W) mm/day
    threshold : float, mm/day
    window : int, odd box side in pixels (1 = pixel by pixel)
    mask : (H, W) bool or None
    probabilistic : bool
    aggregate : "mean" or "sums"
        With leading axes: the mean of the per-field scores (fields without any event are skipped), or one score
        from the sums over all fields (as in Roberts & Lean, and :class:`EnsembleScores`).

    Returns
    -------
    float in [0, 1] (NaN when no field has an event in either)
    """
    pred, obs = _f64(pred), _f64(obs)
    _check_same(pred, obs)
    if obs.ndim < 2:
        raise ValueError("fss needs fields with two spatial axes")
    v = _valid(obs, mask, pred)
    pf = np.where(v, pred if probabilistic else (pred >= threshold), 0.0)
    po = np.where(v, obs >= threshold, 0.0)
    num, den = _fss_terms(pf, po, v, window)
    if aggregate == "sums":
        return 1.0 - _div(num.sum(), den.sum())
    if aggregate != "mean":
        raise ValueError(f"aggregate must be 'mean' or 'sums', got {aggregate!r}")
    num, den = np.atleast_1d(num), np.atleast_1d(den)
    keep = den > 0
    return _mean(1.0 - num[keep] / den[keep])


# --------------------------------------------------------------------------------------------------------------------
# extremes


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


_CELLS = ("hits", "misses", "false_alarms", "correct_negatives")


def _table(pred_event: np.ndarray, obs_event: np.ndarray) -> dict[str, int]:
    return {
        "hits": int((pred_event & obs_event).sum()),
        "misses": int((~pred_event & obs_event).sum()),
        "false_alarms": int((pred_event & ~obs_event).sum()),
        "correct_negatives": int((~pred_event & ~obs_event).sum()),
    }


def contingency(pred: ArrayLike, obs: ArrayLike, threshold: float, mask: ArrayLike | None = None) -> dict[str, int]:
    """2 x 2 contingency table of the event ``value >= threshold`` over valid pixels (of all fields).

    Parameters
    ----------
    pred, obs : (..., H, W) mm/day
    threshold : float, mm/day
    mask : (H, W) bool or None

    Returns
    -------
    dict of int counts: ``hits``, ``misses``, ``false_alarms``, ``correct_negatives``
    """
    pred, obs = _f64(pred), _f64(obs)
    _check_same(pred, obs)
    v = _valid(obs, mask, pred)
    return _table(pred[v] >= threshold, obs[v] >= threshold)


def csi(table: dict[str, float]) -> float:
    """Critical Success Index ``hits / (hits + misses + false_alarms)`` (NaN with neither events nor forecasts).

    Parameters
    ----------
    table : dict from :func:`contingency`

    Returns
    -------
    float in [0, 1]
    """
    return _div(table["hits"], table["hits"] + table["misses"] + table["false_alarms"])


def sedi(table: dict[str, float]) -> float:
    """Symmetric Extremal Dependence Index (Ferro & Stephenson 2011), for rare events.

    ``SEDI = [ln F - ln H - ln(1-F) + ln(1-H)] / [ln F + ln H + ln(1-F) + ln(1-H)]`` with hit rate
    ``H = hits / (hits + misses)`` and false-alarm rate ``F = false_alarms / (false_alarms + correct_negatives)``.
    1 is perfect, 0 no skill. Undefined (NaN) when H or F is 0 or 1 (a logarithm of 0), or has no denominator;
    no ad-hoc clipping is applied.

    Parameters
    ----------
    table : dict from :func:`contingency`

    Returns
    -------
    float in [-1, 1] or NaN
    """
    H = _div(table["hits"], table["hits"] + table["misses"])
    F = _div(table["false_alarms"], table["false_alarms"] + table["correct_negatives"])
    if not (0.0 < H < 1.0 and 0.0 < F < 1.0):
        return math.nan
    lf, lh, l1f, l1h = math.log(F), math.log(H), math.log1p(-F), math.log1p(-H)
    return (lf - lh - l1f + l1h) / (lf + lh + l1f + l1h)


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
    """Mean over valid pixels of Rx1day(sim) - Rx1day(obs), both over the same valid pixel-days.

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
    if sim.shape == obs.shape:
        v = _valid(obs, mask, sim)
        rx_sim = rx1day(sim, v)
    else:
        if obs.ndim != 3:
            raise ValueError("rx1day_bias needs obs (T, H, W)")
        _check_ens(sim, obs)  # sim (T, K, H, W)
        v = _valid(obs, mask, ens=sim)
        rx_sim = rx1day(sim, v[:, None]).mean(axis=0)
    rx_obs = rx1day(obs, v)
    d = rx_sim - rx_obs
    return _mean(d[np.isfinite(d)])


# --------------------------------------------------------------------------------------------------------------------
# streaming


class LogHistogram:
    """Streaming histogram of non-negative intensities for quantiles without holding the values.

    Bins are log-spaced with relative width ``rel_width`` between ``vmin`` and ``vmax`` (defaults: 0.1 % from
    1e-3 to 1e4 mm/day: 16,127 bins, 129 kB), plus one bin for values <= 0 (dry), one for (0, vmin) and one for
    values >= vmax. An order statistic is placed inside its bin (the bin's values spread evenly, geometrically in
    the log bins, clipped to the observed min and max) and quantiles interpolate linearly between order statistics
    as ``numpy.quantile`` does, so they are within ``rel_width`` (relative) of the exact value above ``vmin`` and
    within ``vmin`` (absolute) below.
    """

    def __init__(self, vmin: float = 1e-3, vmax: float = 1e4, rel_width: float = 1e-3):
        self.vmin, self.vmax, self.rel_width = float(vmin), float(vmax), float(rel_width)
        self._log_step = math.log1p(rel_width)
        self.n_log = math.ceil(math.log(vmax / vmin) / self._log_step)
        self.counts = np.zeros(self.n_log + 3, np.int64)  # [<=0, (0, vmin), log bins..., >=vmax]
        self.min, self.max = math.inf, -math.inf

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def add(self, values: ArrayLike) -> None:
        """Add values (any shape, mm/day); non-finite ones are ignored."""
        x = _f64(values).ravel()
        x = x[np.isfinite(x)]
        if not x.size:
            return
        self.min, self.max = min(self.min, float(x.min())), max(self.max, float(x.max()))
        idx = np.ones(x.size, np.int64)
        idx[x <= 0] = 0
        pos = x >= self.vmin
        k = np.floor(np.log(x[pos] / self.vmin) / self._log_step).astype(np.int64)
        idx[pos] = 2 + np.minimum(k, self.n_log)  # n_log + 2 is the overflow bin
        self.counts += np.bincount(idx, minlength=self.counts.size)

    def merge(self, other: LogHistogram) -> None:
        """Add another histogram with the same bins."""
        if (other.vmin, other.vmax, other.rel_width) != (self.vmin, self.vmax, self.rel_width):
            raise ValueError("histograms with different bins")
        self.counts += other.counts
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    def _bin_range(self, b: int) -> tuple[float, float]:
        if b == 0:
            lo, hi = -math.inf, 0.0
        elif b == 1:
            lo, hi = 0.0, self.vmin
        elif b == self.n_log + 2:
            lo, hi = self.vmax, math.inf
        else:
            lo = self.vmin * math.exp((b - 2) * self._log_step)
            hi = lo * math.exp(self._log_step)
        # the observed extremes narrow the open-ended and the extreme bins
        return max(lo, self.min), min(hi, self.max)

    def _order_statistic(self, j: int, cum: np.ndarray) -> float:
        """Approximate j-th smallest value (0-based): spread the values of its bin evenly over the bin."""
        b = int(np.searchsorted(cum, j, side="right"))
        frac = (j - (cum[b] - self.counts[b]) + 0.5) / self.counts[b]
        lo, hi = self._bin_range(b)
        value = lo * (hi / lo) ** frac if 2 <= b < self.n_log + 2 else lo + (hi - lo) * frac
        return min(max(value, self.min), self.max)

    def quantile(self, q: float) -> float:
        """Approximate ``numpy.quantile(values, q)`` (mm/day, linear interpolation between order statistics); NaN
        when empty."""
        n = self.n
        if n == 0:
            return math.nan
        cum = np.cumsum(self.counts)
        rank = q * (n - 1)  # 0-based position in the sorted values
        j = min(int(math.floor(rank)), n - 1)
        low = self._order_statistic(j, cum)
        if rank == j:
            return low
        return low + (rank - j) * (self._order_statistic(j + 1, cum) - low)


class EnsembleScores:
    """Accumulates, day by day, everything evaluate needs for one forecast system (an ensemble per day).

    Every score is over the effective mask of the day (``mask & isfinite(obs) & all members finite``), in mm/day.
    Memory is independent of the number of days: sums and counts, a per-pixel running maximum for Rx1day, mean power
    spectra and two :class:`LogHistogram` for the quantiles. Accumulators merge exactly (sums are added), so days
    may be split among several objects in any order.

    Parameters
    ----------
    K : int, members per day (>= 2)
    thresholds : dict label -> mm/day; must hold ``"P95"`` and ``"P99"``. Every label gets twCRPS, CSI, SEDI and
        FSS; ``"P95"`` is also the tail of ``MAE_tail``.
    pools : block sides (pixels) of the pooled CRPS
    fss_windows : box sides (pixels) of the FSS
    quantiles : levels of the quantile biases
    wet : float, mm/day, wet-day threshold
    rng_seed : int >= 0
        Seed of the random tie-breaking of the rank histogram. The generator of a day is seeded from ``rng_seed``
        and a checksum of that day's data, so the counts do not depend on how days are split among merged
        accumulators nor on their order.

    Notes
    -----
    The deterministic scores (``MAE_all``, ``MAE_tail``, ``RMSE_all``, ``mass_bias``) are those of the pixelwise
    ensemble median (the mean of the two middle members for even K); ``MAE_member`` is the MAE of one member,
    averaged over members. Quantile biases compare all member values of all valid pixel-days with all observed
    values, through log-spaced histograms (0.1 % relative accuracy). Rx1day uses each member's own running maximum,
    averaged over members. Spectra are averaged over days (and for the simulation over members) with
    :func:`rapsd` (missing pixels filled with the field's mean); ``spectrum_log_ratio`` is given for the bands of
    :data:`SPECTRAL_BANDS`.
    """

    def __init__(
        self,
        K: int,
        thresholds: dict[str, float],
        pools: Sequence[int] = (4, 16),
        fss_windows: Sequence[int] = (1, 5, 11),
        quantiles: Sequence[float] = (0.95, 0.99, 0.999),
        wet: float = 1.0,
        rng_seed: int = 0,
    ):
        if K < 2:
            raise ValueError("EnsembleScores needs K >= 2 members (fair CRPS, spread)")
        missing = {"P95", "P99"} - set(thresholds)
        if missing:
            raise ValueError(f"thresholds lacks {sorted(missing)}")
        self.K = int(K)
        self.thresholds = {str(k): float(v) for k, v in thresholds.items()}
        self.pools = tuple(int(p) for p in pools)
        self.fss_windows = tuple(int(w) for w in fss_windows)
        self.quantiles = tuple(float(q) for q in quantiles)
        self.wet = float(wet)
        self.rng_seed = int(rng_seed)
        self.days = 0
        self.pixels = 0
        # plain sums, keyed by name; all merge by addition
        self.sums: dict[str, float] = {}
        self.rank_counts = np.zeros(self.K + 1, np.int64)
        self.tables = {key: dict.fromkeys(_CELLS, 0) for key in self.thresholds}
        self.hist_sim, self.hist_obs = LogHistogram(), LogHistogram()
        self.rx_obs: np.ndarray | None = None  # (H, W) running max, -inf where never valid
        self.rx_sim: np.ndarray | None = None  # (K, H, W)
        self.power_obs: np.ndarray | None = None  # sum over days of the spectrum
        self.power_sim: np.ndarray | None = None  # sum over days of the member-mean spectrum
        self.freqs: np.ndarray | None = None

    def _config(self) -> tuple:
        return self.K, self.thresholds, self.pools, self.fss_windows, self.quantiles, self.wet

    def _add(self, name: str, value: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value)

    def accumulate(self, ens: ArrayLike, obs: ArrayLike, mask: ArrayLike | None = None) -> None:
        """Add one day.

        Parameters
        ----------
        ens : (K, H, W) mm/day
        obs : (H, W) mm/day
        mask : (H, W) bool or None
        """
        ens, obs = _f64(ens), _f64(obs)
        if obs.ndim != 2 or ens.shape != (self.K, *obs.shape):
            raise ValueError(f"expected ens (K={self.K}, H, W) and obs (H, W), got {ens.shape} and {obs.shape}")
        if self.rx_obs is not None and self.rx_obs.shape != obs.shape:
            raise ValueError(f"grid changed from {self.rx_obs.shape} to {obs.shape}")
        v = _valid(obs, mask, ens=ens)
        self.days += 1
        n = int(v.sum())
        if self.rx_obs is None:
            self.rx_obs = np.full(obs.shape, -np.inf)
            self.rx_sim = np.full(ens.shape, -np.inf)
        if n == 0:
            return
        self.pixels += n
        K = self.K
        x, y = ens[:, v], obs[v]  # (K, n), (n,)
        xs = np.sort(x, axis=0)

        # CRPS and its threshold-weighted versions (max(., t) keeps the members sorted)
        self._add("crps", _crps_sorted(xs, y, True).sum())
        for key, t in self.thresholds.items():
            self._add(f"twcrps_{key}", _crps_sorted(np.maximum(xs, t), np.maximum(y, t), True).sum())

        # pooled CRPS on the full grid
        ens_v = np.where(v, ens, 0.0)
        obs_v = np.where(v, obs, 0.0)
        for pool in self.pools:
            for how in ("mean", "max"):
                pobs, keep = _block_pool(obs_v, v, pool, how)
                pens, _ = _block_pool(ens_v, v, pool, how)
                if keep.any():
                    c = _crps_sorted(np.sort(pens[:, keep], axis=0), pobs[keep], True)
                    self._add(f"pool{pool}_{how}", c.sum())
                    self._add(f"pool{pool}_{how}_n", c.size)

        # deterministic scores of the pixelwise median, and of single members
        median = 0.5 * (xs[(K - 1) // 2] + xs[K // 2])
        err = median - y
        self._add("abs", np.abs(err).sum())
        self._add("sq", (err**2).sum())
        tail = y >= self.thresholds["P95"]
        self._add("tail_abs", np.abs(err[tail]).sum())
        self._add("tail_n", tail.sum())
        self._add("mass", err.mean())
        self._add("mass_days", 1)
        self._add("member_abs", np.abs(x - y).sum())

        # spread and skill
        self._add("var", x.var(axis=0, ddof=1).sum())
        self._add("mean_sq", ((x.mean(axis=0) - y) ** 2).sum())

        # rank histogram: a day's tie-breaking depends only on the seed and the day's data (merge-invariant)
        seed = [self.rng_seed, zlib.crc32(np.ascontiguousarray(y)), zlib.crc32(np.ascontiguousarray(x))]
        ranks = _ranks(x, y, np.random.default_rng(seed))
        self.rank_counts += np.bincount(ranks, minlength=K + 1)

        # intensities
        self.hist_sim.add(x)
        self.hist_obs.add(y)
        self._add("wet_sim", (x >= self.wet).sum())
        self._add("wet_obs", (y >= self.wet).sum())

        # categorical scores and FSS
        for key, t in self.thresholds.items():
            obs_event = y >= t
            member_event = x >= t
            for cell, count in _table(member_event, obs_event[None]).items():
                self.tables[key][cell] += count
            prob = np.where(v, (ens >= t).mean(axis=0), 0.0)
            event = np.where(v, obs >= t, 0.0)
            for w in self.fss_windows:
                num, den = _fss_terms(prob, event, v, w)
                self._add(f"fss_num_{key}_{w}", num)
                self._add(f"fss_den_{key}_{w}", den)

        # Rx1day
        np.maximum(self.rx_obs, np.where(v, obs, -np.inf), out=self.rx_obs)
        np.maximum(self.rx_sim, np.where(v, ens, -np.inf), out=self.rx_sim)

        # spectra, with the same missing pixels in observation and members
        freqs, power = rapsd(np.where(v, np.concatenate([obs[None], ens]), np.nan))
        if self.power_obs is None:
            self.freqs, self.power_obs, self.power_sim = freqs, np.zeros(freqs.size), np.zeros(freqs.size)
        self.power_obs += power[0]
        self.power_sim += power[1:].mean(axis=0)
        self._add("spectra_days", 1)

    def merge(self, other: EnsembleScores) -> None:
        """Add the days of another accumulator with the same settings (and grid)."""
        if other._config() != self._config():
            raise ValueError("cannot merge EnsembleScores with different settings")
        if other.rx_obs is not None:
            if self.rx_obs is None:
                self.rx_obs, self.rx_sim = other.rx_obs.copy(), other.rx_sim.copy()
            elif self.rx_obs.shape != other.rx_obs.shape:
                raise ValueError("cannot merge EnsembleScores of different grids")
            else:
                np.maximum(self.rx_obs, other.rx_obs, out=self.rx_obs)
                np.maximum(self.rx_sim, other.rx_sim, out=self.rx_sim)
        if other.power_obs is not None:
            if self.power_obs is None:
                self.freqs = other.freqs
                self.power_obs, self.power_sim = other.power_obs.copy(), other.power_sim.copy()
            else:
                self.power_obs += other.power_obs
                self.power_sim += other.power_sim
        self.days += other.days
        self.pixels += other.pixels
        for name, value in other.sums.items():
            self._add(name, value)
        self.rank_counts += other.rank_counts
        for key, table in other.tables.items():
            for cell, count in table.items():
                self.tables[key][cell] += count
        self.hist_sim.merge(other.hist_sim)
        self.hist_obs.merge(other.hist_obs)

    def compute(self) -> dict[str, float | int | list]:
        """All scores as a flat, JSON-serializable dict of plain floats, ints and lists (NaN when undefined).

        Keys: ``CRPS``; ``twCRPS_<label>``; ``CRPS_pool<p>_mean`` / ``_max``; ``MAE_all``, ``MAE_tail``,
        ``RMSE_all``, ``mass_bias`` (ensemble median); ``MAE_member``; ``spread``, ``skill``,
        ``spread_skill_ratio``; ``rank_histogram`` (counts), ``rank_flatness_chi2`` / ``_p`` / ``_rel_dev``;
        ``quantile_bias_<q>``, ``quantile_ratio_<q>``, ``quantile_sim_<q>``, ``quantile_obs_<q>`` (q as ``P95``,
        ``P99``, ``P99.9``); ``CSI_<label>``, ``SEDI_<label>``; ``FSS_<label>_w<window>``;
        ``wet_day_frequency_sim`` / ``_obs``; ``Rx1day_bias``; ``rapsd_freqs``, ``rapsd_obs``, ``rapsd_sim``,
        ``spectrum_log_ratio`` (large, medium, small scales); ``days``, ``pixels`` (valid pixel-days), ``K``.
        """
        s = self.sums.get
        n, K = self.pixels, self.K
        out: dict[str, float | int | list] = {"CRPS": _div(s("crps", 0.0), n)}
        for key in self.thresholds:
            out[f"twCRPS_{key}"] = _div(s(f"twcrps_{key}", 0.0), n)
        for pool in self.pools:
            for how in ("mean", "max"):
                out[f"CRPS_pool{pool}_{how}"] = _div(s(f"pool{pool}_{how}", 0.0), s(f"pool{pool}_{how}_n", 0.0))
        out["MAE_all"] = _div(s("abs", 0.0), n)
        out["MAE_tail"] = _div(s("tail_abs", 0.0), s("tail_n", 0.0))
        out["RMSE_all"] = math.sqrt(_div(s("sq", 0.0), n))
        out["mass_bias"] = _div(s("mass", 0.0), s("mass_days", 0.0))
        out["MAE_member"] = _div(s("member_abs", 0.0), n * K)
        spread, skill = math.sqrt(_div(s("var", 0.0), n)), math.sqrt(_div(s("mean_sq", 0.0), n))
        out.update(spread=spread, skill=skill, spread_skill_ratio=_div(spread, skill) * math.sqrt((K + 1) / K))
        out["rank_histogram"] = [int(c) for c in self.rank_counts]
        flat = rank_histogram_flatness(self.rank_counts)
        out.update(rank_flatness_chi2=flat["chi2"], rank_flatness_p=flat["p"], rank_flatness_rel_dev=flat["rel_dev"])
        for q in self.quantiles:
            label = _q_label(q)
            qs, qo = self.hist_sim.quantile(q), self.hist_obs.quantile(q)
            out[f"quantile_bias_{label}"] = qs - qo
            out[f"quantile_ratio_{label}"] = _div(qs, qo)
            out[f"quantile_sim_{label}"] = qs
            out[f"quantile_obs_{label}"] = qo
        for key, table in self.tables.items():
            out[f"CSI_{key}"] = csi(table)
            out[f"SEDI_{key}"] = sedi(table)
        for key in self.thresholds:
            for w in self.fss_windows:
                out[f"FSS_{key}_w{w}"] = 1.0 - _div(s(f"fss_num_{key}_{w}", 0.0), s(f"fss_den_{key}_{w}", 0.0))
        out["wet_day_frequency_sim"] = _div(s("wet_sim", 0.0), n * K)
        out["wet_day_frequency_obs"] = _div(s("wet_obs", 0.0), n)
        if self.rx_obs is not None:
            seen = np.isfinite(self.rx_obs)
            out["Rx1day_bias"] = _mean(self.rx_sim[:, seen].mean(axis=0) - self.rx_obs[seen])
        else:
            out["Rx1day_bias"] = math.nan
        if self.power_obs is not None:
            days = s("spectra_days", 0.0)
            p_obs, p_sim = self.power_obs / days, self.power_sim / days
            out["rapsd_freqs"] = [float(f) for f in self.freqs]
            out["rapsd_obs"] = [float(p) for p in p_obs]
            out["rapsd_sim"] = [float(p) for p in p_sim]
            out["spectrum_log_ratio"] = spectrum_log_ratio(p_sim, p_obs, self.freqs, SPECTRAL_BANDS)
        else:
            out.update(rapsd_freqs=[], rapsd_obs=[], rapsd_sim=[], spectrum_log_ratio=[math.nan] * 3)
        out.update(days=int(self.days), pixels=int(self.pixels), K=K)
        return {k: (float(v) if isinstance(v, float | np.floating) else v) for k, v in out.items()}
