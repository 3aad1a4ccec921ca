"""Losses for the downstream SRDRN: pure functions of tensors (``density_weights``: of numpy arrays).

Conventions: ``pred``/``target`` are normalized precipitation ``z = (log1p(mm/day) - mean) / std`` of shape
(B, 1, H, W) (quantile predictions: (B, Q, H, W)); ``mask`` (B, 1, H, W) bool marks valid pixels with an
observation, and masked pixels never count, even if their target is NaN. With per-sample ``weights`` (B,),
each sample's pixel losses are multiplied by its weight and the sum is divided by the weighted count of valid
pixels ``sum_b weights_b * n_valid_b``, so uniform weights give the unweighted mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scipy.stats import gaussian_kde

from precip_cvae.data.normalize import Normalization

__all__ = [
    "crps_from_quantiles",
    "density_weights",
    "intensity_weights",
    "mae",
    "pinball",
    "quantile_weights",
    "weighted_mae",
]


def _pixel_weights(mask: torch.Tensor, weights: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) float: 0 outside ``mask``, the sample's weight (or 1) inside."""
    w = mask.to(like.dtype)
    if weights is not None:
        weights = torch.as_tensor(weights, dtype=like.dtype, device=like.device)
        if weights.shape != (like.shape[0],):
            raise ValueError(f"weights: expected shape ({like.shape[0]},), got {tuple(weights.shape)}")
        w = w * weights.view(-1, 1, 1, 1)
    return w


def _weighted_mean(values: torch.Tensor, pixel_weights: torch.Tensor) -> torch.Tensor:
    """sum(values * w) / sum(w); 0 (with a zero gradient) when no pixel counts."""
    # where, not a product alone: NaN * 0 is NaN, and sea pixels of arrays from disk may hold NaN.
    weighted = torch.where(pixel_weights > 0, values * pixel_weights, torch.zeros_like(values))
    return weighted.sum() / pixel_weights.sum().clamp_min(1e-12)


def _clean_target(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Zero masked targets: a NaN there would otherwise turn the gradient into NaN even after masking.
    return torch.where(mask, target, torch.zeros_like(target))


def mae(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean absolute error over valid pixels, in normalized units.

    Parameters
    ----------
    pred, target : (B, 1, H, W) normalized
    mask : (B, 1, H, W) bool
    weights : (B,) per-sample weights, or None

    Returns
    -------
    scalar tensor
    """
    target = _clean_target(target, mask)
    return _weighted_mean((pred - target).abs(), _pixel_weights(mask, weights, pred))


def intensity_weights(
    target: torch.Tensor,
    normalization: Normalization,
    w_min: float = 1.0,
    w_max: float = 10.0,
    scale_mm: float = 10.0,
) -> torch.Tensor:
    """Per-pixel weights growing with the observed intensity: ``clip(pr_mm / scale_mm, w_min, w_max)``.

    Parameters
    ----------
    target : (B, 1, H, W) normalized observation
    normalization : the target transform

    Returns
    -------
    (B, 1, H, W), no gradient
    """
    pr_mm = normalization.to_mm(target.detach())
    return (pr_mm / scale_mm).clamp(w_min, w_max)


def weighted_mae(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    normalization: Normalization,
    weights: torch.Tensor | None = None,
    w_min: float = 1.0,
    w_max: float = 10.0,
    scale_mm: float = 10.0,
) -> torch.Tensor:
    """SRDRN-style intensity-weighted MAE in normalized space.

    Each valid pixel's error ``|pred - target|`` is multiplied by ``w = clip(pr_mm / scale_mm, w_min, w_max)``
    with ``pr_mm = max(expm1(target * std + mean), 0)`` the OBSERVED precipitation in mm/day. The defaults
    give weight 1 up to 10 mm/day, then a linear rise to 10 at 100 mm/day and above: heavy days count up to
    ten times more, without letting a single extreme pixel dominate the batch. As in the Keras loss, the sum
    is divided by the (sample-weighted) count of valid pixels, not by the sum of intensity weights.

    Parameters
    ----------
    pred, target : (B, 1, H, W) normalized
    mask : (B, 1, H, W) bool
    normalization : the target transform
    weights : (B,) per-sample weights, or None
    w_min, w_max : bounds on the intensity weight (unitless)
    scale_mm : mm/day per unit of weight

    Returns
    -------
    scalar tensor
    """
    target = _clean_target(target, mask)
    w_int = intensity_weights(target, normalization, w_min, w_max, scale_mm)
    return _weighted_mean(w_int * (pred - target).abs(), _pixel_weights(mask, weights, pred))


def _pinball_terms(pred_q: torch.Tensor, target: torch.Tensor, quantiles: Sequence[float]) -> torch.Tensor:
    """rho_tau(y - q) for each quantile: (B, Q, H, W)."""
    if pred_q.shape[1] != len(quantiles):
        raise ValueError(f"pred_q has {pred_q.shape[1]} quantile channels, but {len(quantiles)} quantiles given")
    tau = torch.as_tensor(list(quantiles), dtype=pred_q.dtype, device=pred_q.device).view(1, -1, 1, 1)
    u = target - pred_q
    return torch.maximum(tau * u, (tau - 1.0) * u)


def pinball(
    pred_q: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    quantiles: Sequence[float],
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-quantile pinball loss, averaged over quantiles and valid pixels.

    ``rho_tau(u) = max(tau * u, (tau - 1) * u)`` with ``u = y - q_tau``.

    Parameters
    ----------
    pred_q : (B, Q, H, W) normalized quantile predictions
    target : (B, 1, H, W) normalized
    mask : (B, 1, H, W) bool
    quantiles : Q levels in (0, 1), in the order of ``pred_q``'s channels
    weights : (B,) per-sample weights, or None

    Returns
    -------
    scalar tensor (normalized units)
    """
    target = _clean_target(target, mask)
    per_pixel = _pinball_terms(pred_q, target, quantiles).mean(dim=1, keepdim=True)
    return _weighted_mean(per_pixel, _pixel_weights(mask, weights, pred_q))


def quantile_weights(quantiles: Sequence[float], rule: Literal["auto", "uniform", "trapezoid"] = "auto") -> np.ndarray:
    """Weights (summing to 1) of the quantile levels in the CRPS approximation.

    ``"uniform"``: 1/Q each (the midpoint rule, right for evenly spaced levels). ``"trapezoid"``: the
    trapezoidal rule over the sorted levels, ``w_k = (tau_{k+1} - tau_{k-1}) / 2`` (half-intervals at the
    ends), divided by ``tau_max - tau_min``, i.e. the average of the integrand over [tau_min, tau_max].
    ``"auto"``: uniform when the levels are evenly spaced, trapezoid otherwise.

    Returns
    -------
    (Q,) weights in the order of ``quantiles``
    """
    tau = np.asarray(quantiles, dtype=np.float64)
    if tau.ndim != 1 or tau.size == 0 or np.any((tau <= 0) | (tau >= 1)):
        raise ValueError(f"quantiles must be a non-empty sequence of levels in (0, 1), got {quantiles}")
    if rule not in ("auto", "uniform", "trapezoid"):
        raise ValueError(f"unknown rule {rule!r}")
    order = np.argsort(tau)
    gaps = np.diff(tau[order])
    if np.any(gaps <= 0):
        raise ValueError(f"quantile levels must be distinct, got {quantiles}")
    even = gaps.size == 0 or np.allclose(gaps, gaps[0], rtol=1e-6, atol=1e-9)
    if rule == "uniform" or (rule == "auto" and even) or tau.size == 1:
        return np.full(tau.size, 1.0 / tau.size)
    half = np.concatenate([[0.0], gaps]) / 2 + np.concatenate([gaps, [0.0]]) / 2
    weights = np.empty_like(tau)
    weights[order] = half / half.sum()
    return weights


def crps_from_quantiles(
    pred_q_mm: torch.Tensor | np.ndarray,
    obs_mm: torch.Tensor | np.ndarray,
    quantiles: Sequence[float],
    mask: torch.Tensor | np.ndarray,
    rule: Literal["auto", "uniform", "trapezoid"] = "auto",
) -> float:
    """Approximate CRPS in mm/day from quantile predictions, averaged over valid pixels.

    Uses the quantile-score decomposition ``CRPS(F, y) = 2 * integral_0^1 rho_tau(y - F^-1(tau)) dtau``,
    replaced by ``2 * sum_k w_k rho_{tau_k}(y - q_k)`` with the weights of :func:`quantile_weights` (by default
    uniform for evenly spaced levels, trapezoidal for uneven ones). With few, tail-heavy levels such as
    (0.5, 0.9, 0.99, 0.999) this is a coarse approximation: the integrand is only sampled in the upper half,
    and its average there stands in for the whole of (0, 1). Compare models with the same levels only.

    Parameters
    ----------
    pred_q_mm : (B, Q, H, W) predicted quantiles, mm/day
    obs_mm : (B, 1, H, W) observations, mm/day (may be NaN where ``mask`` is False)
    quantiles : Q levels in (0, 1), in the order of ``pred_q_mm``'s channels
    mask : (B, 1, H, W) bool valid pixels
    rule : "auto", "uniform" or "trapezoid", see :func:`quantile_weights`

    Returns
    -------
    float, mm/day (0.0 when no pixel is valid)
    """
    pred_q = torch.as_tensor(pred_q_mm, dtype=torch.float64)
    mask_t = torch.as_tensor(mask, dtype=torch.bool, device=pred_q.device)
    obs = _clean_target(torch.as_tensor(obs_mm, dtype=torch.float64, device=pred_q.device), mask_t)
    w = torch.as_tensor(quantile_weights(quantiles, rule), dtype=torch.float64, device=pred_q.device)
    with torch.no_grad():
        per_pixel = 2.0 * (_pinball_terms(pred_q, obs, quantiles) * w.view(1, -1, 1, 1)).sum(dim=1, keepdim=True)
        return float(_weighted_mean(per_pixel, _pixel_weights(mask_t, None, per_pixel)))


def density_weights(
    values: np.ndarray, alpha: float = 1.0, bandwidth: float | str | None = None, eps: float = 1e-6
) -> np.ndarray:
    """DenseWeight sample weights (Steininger et al. 2021): rare target values weigh more.

    ``w_i = max(1 - alpha * p'(y_i), eps)``, where ``p'`` is the Gaussian KDE density of ``values`` min-max
    normalized to [0, 1] over the samples; the weights are then rescaled to mean 1. Here ``y`` is meant to
    be one statistic per day, e.g. the land-mean precipitation in mm/day.

    Parameters
    ----------
    values : (N,) finite target statistic per sample
    alpha : strength; 0 gives all ones, 1 gives the most common value the weight ``eps`` (before rescaling)
    bandwidth : ``bw_method`` of :class:`scipy.stats.gaussian_kde` (None: Scott's rule)
    eps : floor on the weights before rescaling, keeps every sample in play

    Returns
    -------
    (N,) float64 weights with mean 1 (all ones when the values do not vary)
    """
    y = np.asarray(values, dtype=np.float64).ravel()
    if y.size == 0:
        return np.ones(0)
    if not np.all(np.isfinite(y)):
        raise ValueError("density_weights: values must be finite")
    if alpha < 0:
        raise ValueError(f"density_weights: alpha must be >= 0, got {alpha}")
    if y.size < 2 or np.ptp(y) == 0 or alpha == 0:
        return np.ones(y.size)  # no density to speak of (and the KDE's covariance would be singular)
    density = gaussian_kde(y, bw_method=bandwidth)(y)
    span = density.max() - density.min()
    scaled = (density - density.min()) / span if span > 0 else np.zeros_like(density)
    weights = np.maximum(1.0 - alpha * scaled, eps)
    return weights / weights.mean()
