"""The cVAE's loss terms: pure functions of tensors (no I/O, no state).

``L_total = L_rec + lambda_mass * L_mass + beta * L_kl`` with
``L_rec = lambda_base * MAE_all + lambda_ext * MAE_ext``. Reconstruction errors are taken in the
normalized space the model predicts in; which pixels are "extreme" is decided in mm/day, through the
per-pixel normalized equivalent of the physical threshold. Pixels outside ``mask`` never count.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from precip_cvae.config import LossConfig
from precip_cvae.data.normalize import Normalization

#: The loss's numbers are the config's ``loss`` section (the name kept for callers of the API).
LossWeights = LossConfig


#: Maps the number of points a batch's masked mean divides by to the number it should divide by. In a data-parallel
#: run it is :meth:`precip_cvae.distributed.Context.share_of_count`: the count over all ranks' blocks of the global
#: batch, divided by the number of ranks, so that DDP's average of the ranks' losses is the global batch's mean even
#: when the ranks hold different numbers of points (extreme pixels, missing observations).
Count = Callable[[torch.Tensor], torch.Tensor]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, count: Count | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is True (0 when the mask is empty, with a gradient of 0); ``count``: see
    :data:`Count` (default: this batch's count, at least 1)."""
    mask = mask.to(values.dtype)
    n = mask.sum()
    return (values * mask).sum() / (count(n.detach()) if count is not None else n.clamp_min(1.0))


def reconstruction_terms(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, threshold_z: torch.Tensor, count: Count | None = None
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
    return masked_mean(error, mask, count), masked_mean(error, extreme, count)


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


def almost_fair_crps(
    members: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, alpha: float, count: Count | None = None
) -> torch.Tensor:
    """Mean over valid points of the almost-fair CRPS of an M-member ensemble (Lang et al. 2024, AIFS-CRPS).

    ``afCRPS = mean_j |x_j - y| - (1 - eps) / (2 M (M - 1)) * sum_{j != k} |x_j - x_k|`` with
    ``eps = (1 - alpha) / M``: ``alpha = 1`` is the fair CRPS (unbiased for the infinite ensemble, but with M = 2 its
    optimum is degenerate: members may drift apart at no cost), ``alpha = 0`` the CRPS of the empirical distribution
    (which rewards too little spread); in between, members are pulled to the observation as well as apart.

    Parameters
    ----------
    members : (B, M, ...) M >= 2 members
    target : (B, ...) the observation, same trailing shape
    mask : (B, ...) bool, points that count
    alpha : in [0, 1]

    Returns
    -------
    scalar (units of the inputs)
    """
    M = members.shape[1]
    if M < 2:
        raise ValueError(f"the ensemble CRPS needs at least 2 members, got {M}")
    skill = (members - target.unsqueeze(1)).abs().mean(dim=1)
    spread = (members.unsqueeze(1) - members.unsqueeze(2)).abs().sum(dim=(1, 2))  # sum over j != k (j == k is 0)
    eps = (1.0 - alpha) / M
    return masked_mean(skill - (1.0 - eps) / (2.0 * M * (M - 1)) * spread, mask, count)


def pooled_fields(fields: torch.Tensor, mask: torch.Tensor, pool: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means over non-overlapping ``pool`` x ``pool`` blocks of the valid pixels of the two trailing axes.

    Grids that are not a multiple of ``pool`` are padded with invalid pixels; a block counts when at least half of
    its pixels are valid. ``fields`` (..., H, W) and ``mask`` (..., H, W) broadcastable; returns the pooled fields
    and the mask of the blocks that count.
    """
    if pool == 1:
        return fields, mask.expand_as(fields)
    H, W = fields.shape[-2:]
    pad = (0, -W % pool, 0, -H % pool)
    weight = F.pad(mask.to(fields.dtype).expand_as(fields), pad)
    total = F.pad(torch.where(mask, fields, torch.zeros_like(fields)), pad)
    lead = fields.shape[:-2]
    shape = (-1, 1, H + pad[3], W + pad[1])
    count = F.avg_pool2d(weight.reshape(shape), pool) * pool * pool
    summed = F.avg_pool2d(total.reshape(shape), pool) * pool * pool
    out_shape = (*lead, count.shape[-2], count.shape[-1])
    count, summed = count.reshape(out_shape), summed.reshape(out_shape)
    return summed / count.clamp_min(1.0), 2 * count >= pool * pool


def ensemble_crps(
    samples: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    alpha: float,
    pools: tuple[int, ...],
    count: Count | None = None,
) -> torch.Tensor:
    """The proper-scoring ensemble term: the almost-fair CRPS of the samples per pixel (``pool`` 1) and of their
    ``pool`` x ``pool`` block means, summed over ``pools``, so that spread and spatial structure are rewarded, not
    only pixel accuracy.

    Parameters
    ----------
    samples : (B, M, 1, H, W) normalized prior samples
    target : (B, 1, H, W) normalized
    mask : (B, 1, H, W) bool valid pixels with an observation
    """
    total = samples.new_zeros(())
    for pool in pools:
        pooled_samples, _ = pooled_fields(samples, mask.unsqueeze(1), pool)
        pooled_target, keep = pooled_fields(target, mask, pool)
        total = total + almost_fair_crps(pooled_samples, pooled_target, keep, alpha, count)
    return total


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
    weights: LossConfig,
    beta: float,
    count: Count | None = None,
) -> dict[str, torch.Tensor]:
    """All terms of the cVAE loss for one batch.

    Parameters
    ----------
    out : the model's forward output ("recon", "mu", "logvar", "prior_mu", "prior_logvar")
    target : (B, 1, H, W) normalized, 0 where ``mask`` is False
    mask : (B, 1, H, W) bool valid pixels with an observation; land : the land subset of it
    threshold_z : (H, W) normalized extreme threshold; normalization : the target transform
    beta : the KL weight of this step (after warm-up)
    count : what the masked means divide by (see :data:`Count`; data-parallel runs)

    Returns
    -------
    dict with "total", "L_rec", "L_mass", "L_kl" (the global latent's and every spatial scale's), "L_crps",
    "MAE_all", "MAE_ext", "L_kl_x<factor>" per spatial latent scale (scalars) and "kl_per_dim".
    """
    recon = out["recon"].float()
    mae_all, mae_ext = reconstruction_terms(recon, target, mask, threshold_z, count)
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
    scale_terms = {}
    for factor, kl in (out.get("scale_kl") or {}).items():
        # KL of each latent map, summed over its pixels, batch mean; free bits per map
        per_map = kl.float().mean(dim=0)
        scale_terms[f"L_kl_x{factor}"] = per_map.clamp_min(weights.free_bits).sum()
        l_kl = l_kl + scale_terms[f"L_kl_x{factor}"]
    total = l_rec + weights.lambda_mass * l_mass + beta * l_kl
    l_crps = recon.new_zeros(())
    if weights.crps_weight > 0 and "prior_samples" in out:
        l_crps = ensemble_crps(
            out["prior_samples"].float(), target, mask, weights.crps_alpha, weights.crps_pools, count
        )
        total = total + weights.crps_weight * l_crps
    return {
        "total": total,
        "L_rec": l_rec,
        "L_mass": l_mass,
        "L_kl": l_kl,
        "L_crps": l_crps,
        **scale_terms,
        "MAE_all": mae_all,
        "MAE_ext": mae_ext,
        "kl_per_dim": per_dim,
    }
