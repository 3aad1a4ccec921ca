"""The cVAE's loss terms: pure functions of tensors (no I/O, no state).

``L_total = L_rec + lambda_mass * L_mass + beta * L_kl`` with
``L_rec = lambda_base * MAE_all + lambda_ext * MAE_ext``. Reconstruction errors are taken in the
normalized space the model predicts in; which pixels are "extreme" is decided in mm/day, through the
per-pixel normalized equivalent of the physical threshold. Pixels outside ``mask`` never count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from precip_cvae.data.normalize import Normalization


@dataclass(frozen=True)
class LossWeights:
    """The loss config's numbers (see :class:`precip_cvae.config.LossConfig`)."""

    lambda_base: float = 1.0
    lambda_ext: float = 3.0
    lambda_mass: float = 0.1
    free_bits: float = 0.0


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is True (0 when the mask is empty, with a gradient of 0)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def reconstruction_terms(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, threshold_z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE over all valid pixels and over extreme pixels (target at or above the threshold).

    Parameters
    ----------
    pred, target : (B, 1, H, W) normalized
    mask : (B, 1, H, W) bool, valid pixels with an observation
    threshold_z : (H, W) normalized equivalent of the mm/day threshold, pixel by pixel

    Returns
    -------
    mae_all, mae_ext : scalars (normalized units)
    """
    error = (pred - target).abs()
    extreme = mask & (target >= threshold_z)
    return masked_mean(error, mask), masked_mean(error, extreme)


def mass_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    land: torch.Tensor,
    normalization: Normalization,
    scale_mm_per_day: float,
) -> torch.Tensor:
    """``|sum_land Y_true - sum_land Y_hat|`` in mm/day, divided by the land pixel count and a scale.

    Dividing by the number of land pixels makes it a difference of land means (the same on any grid);
    dividing by ``scale_mm_per_day`` (the training period's mean land precipitation) makes it unitless.

    Parameters
    ----------
    pred, target : (B, 1, H, W) normalized
    land : (B, 1, H, W) bool, valid land pixels with an observation
    normalization : the target transform (its differentiable inverse gives mm/day)

    Returns
    -------
    scalar, the batch mean.
    """
    weight = land.to(pred.dtype)
    count = weight.sum(dim=(1, 2, 3)).clamp_min(1.0)
    true_sum = (normalization.to_mm(target) * weight).sum(dim=(1, 2, 3))
    pred_sum = (normalization.to_mm(pred) * weight).sum(dim=(1, 2, 3))
    return ((true_sum - pred_sum).abs() / count).mean() / scale_mm_per_day


def kl_divergence(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    prior_mu: torch.Tensor | None = None,
    prior_logvar: torch.Tensor | None = None,
    free_bits: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Analytic KL(q || p) between diagonal Gaussians; p = N(0, I) when no prior is given.

    ``KL = 0.5 * sum(logvar_p - logvar_q + (var_q + (mu_q - mu_p)^2) / var_p - 1)``.
    With ``free_bits`` > 0, each latent dimension's batch-mean KL below that many nats costs nothing
    (Kingma et al. 2016), which keeps some dimensions in use.

    Parameters
    ----------
    mu, logvar : (B, d_z) posterior
    prior_mu, prior_logvar : (B, d_z) or None

    Returns
    -------
    kl : scalar, summed over latent dimensions, averaged over the batch (after free bits)
    kl_per_dim : (d_z,) batch-mean KL of each dimension, before free bits
    """
    if prior_mu is None:
        prior_mu = torch.zeros_like(mu)
    if prior_logvar is None:
        prior_logvar = torch.zeros_like(logvar)
    per = 0.5 * (prior_logvar - logvar + (logvar.exp() + (mu - prior_mu) ** 2) / prior_logvar.exp() - 1.0)
    per_dim = per.mean(dim=0)
    kl = per_dim.clamp_min(free_bits).sum() if free_bits > 0 else per_dim.sum()
    return kl, per_dim


def kl_weight(epoch: float, beta: float, warmup_epochs: int) -> float:
    """Linear KL warm-up: 0 at the start of epoch 0, ``beta`` from epoch ``warmup_epochs`` on.

    ``epoch`` may be fractional (epoch + fraction of its batches done).
    """
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, max(0.0, epoch / warmup_epochs))


def cvae_loss(
    out: dict[str, torch.Tensor],
    target: torch.Tensor,
    mask: torch.Tensor,
    land: torch.Tensor,
    threshold_z: torch.Tensor,
    normalization: Normalization,
    scale_mm_per_day: float,
    weights: LossWeights,
    beta: float,
) -> dict[str, torch.Tensor]:
    """All terms of the cVAE loss for one batch.

    Parameters
    ----------
    out : the model's forward output ("recon", "mu", "logvar", "prior_mu", "prior_logvar")
    target : (B, 1, H, W) normalized, 0 where ``mask`` is False
    mask : (B, 1, H, W) bool valid pixels with an observation; land : the land subset of it
    threshold_z : (H, W) normalized extreme threshold; normalization : the target transform
    beta : the KL weight of this step (after warm-up)

    Returns
    -------
    dict with "total", "L_rec", "L_mass", "L_kl", "MAE_all", "MAE_ext" (scalars) and "kl_per_dim".
    """
    recon = out["recon"].float()
    mae_all, mae_ext = reconstruction_terms(recon, target, mask, threshold_z)
    l_rec = weights.lambda_base * mae_all + weights.lambda_ext * mae_ext
    l_mass = mass_loss(recon, target, land, normalization, scale_mm_per_day)
    prior_mu, prior_logvar = out.get("prior_mu"), out.get("prior_logvar")
    l_kl, per_dim = kl_divergence(
        out["mu"].float(),
        out["logvar"].float(),
        None if prior_mu is None else prior_mu.float(),
        None if prior_logvar is None else prior_logvar.float(),
        weights.free_bits,
    )
    total = l_rec + weights.lambda_mass * l_mass + beta * l_kl
    return {
        "total": total,
        "L_rec": l_rec,
        "L_mass": l_mass,
        "L_kl": l_kl,
        "MAE_all": mae_all,
        "MAE_ext": mae_ext,
        "kl_per_dim": per_dim,
    }
