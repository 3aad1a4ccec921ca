"""The conditional VAE: encoders, latent heads, a FiLM-conditioned decoder and the assembled model.

The model describes p(Y_hr | X_lr, S) for one day:

* ``Y_hr`` — high-resolution precipitation, shape (1, H, W), in normalized units
  ``(log1p(mm/day) - mean) / std`` (per pixel; dry pixels are negative, heavy ones reach ~6);
* ``X_lr`` — standardized coarse predictors, shape (C, h, w);
* ``S`` — static maps on the high-resolution grid, shape (S_ch, H, W).

The coarse predictors never get interpolated onto the fine grid. They are summarized into a vector ``h_X``;
the decoder grows the field from a small learned spatial seed built from ``[z; h_X]`` and modulates every
upsampling stage with the same vector (FiLM), so both the latent code and the large-scale state act at each
scale. Any grid sizes work: H/h need not be an integer, odd sizes and a 1 × 1 coarse grid are fine.

Shape conventions in this module: B = batch, d_z / d_x / d_y = sizes from :class:`ModelConfig`.

Parts, one module each: ``encoders`` (EncoderX, EncoderY), ``latents`` (the global latent's posterior head and
conditional prior; the spatial latent maps), ``decoder`` (FiLM, UpBlock, Decoder), ``heads`` (the output heads),
``cvae`` (the assembled CVAE, its parameter count and FLOPs).
"""

from precip_cvae.model._layers import fit_latent_scales, n_scales
from precip_cvae.model.cvae import CVAE, count_parameters, flops_per_sample
from precip_cvae.model.decoder import Decoder, FiLM, UpBlock
from precip_cvae.model.encoders import EncoderX, EncoderY
from precip_cvae.model.heads import OUTPUT_HEADS, CensoredHead, LinearHead, build_head
from precip_cvae.model.latents import ConditionalPrior, LatentHead, SpatialContext, SpatialLatent

__all__ = [
    "CVAE",
    "CensoredHead",
    "LinearHead",
    "OUTPUT_HEADS",
    "build_head",
    "ConditionalPrior",
    "Decoder",
    "EncoderX",
    "EncoderY",
    "FiLM",
    "LatentHead",
    "SpatialContext",
    "SpatialLatent",
    "UpBlock",
    "count_parameters",
    "fit_latent_scales",
    "flops_per_sample",
    "n_scales",
]
