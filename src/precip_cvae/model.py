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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from precip_cvae.config import ModelConfig

#: Bounds on every predicted log-variance. exp(-12) ~ 6e-6 and exp(8) ~ 3e3: wide enough never to bind in a
#: healthy run, narrow enough that exp() cannot overflow in float16 and the KL term stays finite.
LOGVAR_MIN = -12.0
LOGVAR_MAX = 8.0

#: Feature maps are pooled to this size before the encoders' MLPs, whatever the grid.
POOL_SIZE = 4

#: Target side (pixels) of the decoder's seed and of the encoder's coarsest map.
SEED_MIN_SIDE = 6

#: Width caps, in multiples of base_filters. The posterior encoder only has to summarize a field into one vector,
#: so it stays narrower than the decoder; at the default config this cuts it from 6.1 M to 2.7 M parameters.
DECODER_WIDTH_CAP = 8
ENCODER_WIDTH_CAP = 4

__all__ = [
    "CVAE",
    "ConditionalPrior",
    "Decoder",
    "EncoderX",
    "EncoderY",
    "LatentHead",
    "count_parameters",
    "flops_per_sample",
    "n_scales",
]


# --------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------


def n_scales(hr_shape: tuple[int, int]) -> int:
    """Number of factor-2 scales between the coarsest feature map and the H × W grid.

    ``max(0, floor(log2(min(H, W) / 6)))``: the shorter side of the coarsest map lands in [6, 12) pixels.

    Parameters
    ----------
    hr_shape : (H, W) of the high-resolution grid, pixels.

    Returns
    -------
    int, >= 0. E.g. 156 × 132 -> 4 (seed 10 × 9), 96 × 84 -> 3 (seed 12 × 11), 24 × 20 -> 1, 5 × 40 -> 0.
    """
    side = min(hr_shape)
    if side < 2 * SEED_MIN_SIDE:
        return 0
    return max(0, int(math.floor(math.log2(side / SEED_MIN_SIDE))))


def _channels(base_filters: int, level: int, cap: int = 8) -> int:
    """Width at ``level`` factor-2 steps below full resolution: doubles per step, capped at ``cap`` × base."""
    return base_filters * min(2**level, cap)


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups of at least 4 channels where possible (1 group for very narrow layers)."""
    groups = max(1, min(8, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


def _mlp(d_in: int, d_hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    """Linear -> SiLU -> (Dropout) -> Linear. No output activation: the result is an embedding or raw params."""
    layers: list[nn.Module] = [nn.Linear(d_in, d_hidden), nn.SiLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(d_hidden, d_out))
    return nn.Sequential(*layers)


def _split_gaussian(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2 d_z) -> mean (B, d_z), clamped log-variance (B, d_z)."""
    mu, logvar = params.chunk(2, dim=-1)
    return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


def _center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop (B, C, H', W') with H' >= H, W' >= W to its central (H, W) window; an odd surplus drops at the end."""
    H, W = size
    top = (x.shape[-2] - H) // 2
    left = (x.shape[-1] - W) // 2
    return x[..., top : top + H, left : left + W]


def _expand_batch(statics: torch.Tensor, batch: int) -> torch.Tensor:
    """Broadcast statics given once, (1, S_ch, H, W), to (batch, S_ch, H, W) without copying."""
    if statics.shape[0] == batch:
        return statics
    if statics.shape[0] != 1:
        raise ValueError(f"statics batch size {statics.shape[0]} must be 1 or equal to the batch size {batch}")
    return statics.expand(batch, *statics.shape[1:])


def _gaussian_noise(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``like``'s device and dtype.

    The noise is drawn on the generator's own device and then moved, so a CPU generator gives the same draws
    for a model on any device.
    """
    device = generator.device if generator is not None else like.device
    eps = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return eps.to(device=like.device, dtype=like.dtype)


# --------------------------------------------------------------------------------------------------------------
# Encoders and latent heads
# --------------------------------------------------------------------------------------------------------------


class EncoderX(nn.Module):
    """Summarize the coarse predictors into one vector.

    Two 3×3 convolutions at the coarse resolution, adaptive average pooling to a fixed 4 × 4 map (which keeps
    the coarse spatial layout and also works for inputs smaller than 4 × 4, down to 1 × 1), then an MLP.
    No normalization inside the conv stack (the inputs are already standardized, and a per-sample norm on a
    1 × 1 map would erase the signal); a LayerNorm on the output gives h_X unit scale.

    Parameters
    ----------
    in_channels : C, number of predictor variables.
    d_x : size of the embedding h_X.
    base_filters : width of the first convolution (the second is twice as wide).
    dropout : dropout probability inside the MLP (0 disables it).

    Shapes
    ------
    (B, C, h, w) standardized predictors -> (B, d_x) embedding (unitless).
    """

    def __init__(self, in_channels: int, d_x: int, base_filters: int, dropout: float = 0.0) -> None:
        super().__init__()
        c1, c2 = base_filters, 2 * base_filters
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(POOL_SIZE),
            nn.Flatten(),
        )
        self.mlp = _mlp(c2 * POOL_SIZE * POOL_SIZE, d_x, d_x, dropout)
        # Unit-scale embedding: without it h_X starts ~20x smaller than z and the decoder would begin by ignoring it.
        self.norm = nn.LayerNorm(d_x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp(self.convs(x)))


class EncoderY(nn.Module):
    """Summarize a high-resolution field together with the static maps into one vector.

    A 3×3 stem at full resolution, then ``n_down`` stride-2 3×3 convolutions (widths base × 2^k, capped at
    4 × base), each followed by GroupNorm and SiLU; adaptive average pooling to 4 × 4, an MLP and a LayerNorm.

    Parameters
    ----------
    in_channels : 1 + S_ch (the target field plus the static maps).
    d_y : size of the embedding h_Y.
    base_filters : width at full resolution.
    n_down : number of stride-2 stages (the model uses :func:`n_scales` of the grid).
    dropout : dropout probability inside the MLP.

    Shapes
    ------
    (B, 1 + S_ch, H, W) -> (B, d_y).
    """

    def __init__(self, in_channels: int, d_y: int, base_filters: int, n_down: int, dropout: float = 0.0) -> None:
        super().__init__()
        width = _channels(base_filters, 0)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), _group_norm(width), nn.SiLU()]
        for level in range(1, n_down + 1):
            out = _channels(base_filters, level, ENCODER_WIDTH_CAP)
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), _group_norm(out), nn.SiLU()]
            width = out
        layers += [nn.AdaptiveAvgPool2d(POOL_SIZE), nn.Flatten()]
        self.convs = nn.Sequential(*layers)
        self.mlp = _mlp(width * POOL_SIZE * POOL_SIZE, d_y, d_y, dropout)
        # Same scale as h_X, so neither dominates the latent head at the start.
        self.norm = nn.LayerNorm(d_y)

    def forward(self, y_and_statics: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp(self.convs(y_and_statics)))

    def features(self, y_and_statics: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The embedding and the feature map after each stage: level k has ceil(H / 2^k) x ceil(W / 2^k) pixels."""
        maps, x = [], y_and_statics
        layers = list(self.convs)
        for i in range(0, len(layers) - 2, 3):  # (conv, norm, act) per level; the pooling and flatten last
            x = layers[i + 2](layers[i + 1](layers[i](x)))
            maps.append(x)
        return self.norm(self.mlp(layers[-1](layers[-2](x)))), maps


class LatentHead(nn.Module):
    """Posterior parameters from the two embeddings: [h_Y; h_X] -> (mu, logvar) of q(z | Y, X, S).

    Parameters
    ----------
    d_in : d_y + d_x.
    d_z : latent size.
    dropout : dropout probability inside the MLP.

    Shapes
    ------
    (B, d_y + d_x) -> mu (B, d_z), logvar (B, d_z), logvar clamped to [LOGVAR_MIN, LOGVAR_MAX] (log of a variance
    in latent units, i.e. nats scale).
    """

    def __init__(self, d_in: int, d_z: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = _mlp(d_in, max(d_in // 2, 2 * d_z), 2 * d_z, dropout)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _split_gaussian(self.mlp(h))


class ConditionalPrior(nn.Module):
    """Learned prior p(z | X): h_X -> (mu_p, logvar_p). Only built when ``ModelConfig.prior == "conditional"``.

    Parameters
    ----------
    d_x : embedding size of h_X.
    d_z : latent size.
    dropout : dropout probability inside the MLP.

    Shapes
    ------
    (B, d_x) -> mu_p (B, d_z), logvar_p (B, d_z) (clamped like the posterior's).
    """

    def __init__(self, d_x: int, d_z: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = _mlp(d_x, max(d_x, 2 * d_z), 2 * d_z, dropout)

    def forward(self, h_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _split_gaussian(self.mlp(h_x))


# --------------------------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------------------------


class FiLM(nn.Module):
    """Per-channel affine modulation from a conditioning vector: x * (1 + scale) + shift.

    Shapes
    ------
    x (B, C, H, W), cond (B, d_cond) -> (B, C, H, W).
    """

    def __init__(self, d_cond: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_cond, 2 * channels)
        # Zero bias: modulation starts as pure scale noise around identity, set by [z; h_X] from step one.
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(cond)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + scale) + shift


class UpBlock(nn.Module):
    """One decoder scale: nearest ×2 upsampling, 3×3 conv, GroupNorm, FiLM, SiLU, a second 3×3 conv, plus skip.

    The skip is a 1×1 conv (identity when widths match) applied at the coarse resolution before upsampling,
    which is cheaper and equal to doing it after (nearest upsampling commutes with a 1×1 conv).

    Shapes
    ------
    x (B, c_in, h, w), cond (B, d_cond) -> (B, c_out, 2h, 2w).
    """

    def __init__(self, c_in: int, c_out: int, d_cond: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm1 = _group_norm(c_out)
        self.film = FiLM(d_cond, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = _group_norm(c_out)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        skip = F.interpolate(self.skip(x), scale_factor=2.0, mode="nearest")
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = F.silu(self.film(self.norm1(self.conv1(x)), cond))
        h = F.silu(self.norm2(self.conv2(h)))
        return h + skip


def _pad_to(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Zero-pad (B, C, h, w) centrally to ``shape`` (>= (h, w)), as the decoder's larger map is cropped centrally."""
    dh, dw = shape[0] - x.shape[-2], shape[1] - x.shape[-1]
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


class SpatialContext:
    """How the decoder draws its spatial latents in one pass, and what it records.

    ``encoder_maps``: the posterior encoder's feature maps by level (posterior mode), or None (prior mode);
    ``temperature`` scales the standard deviation of the draws. After the pass, ``kl`` holds, per latent scale
    (its factor), the KL(q || p) of each latent map summed over its pixels, (B, channels) (posterior mode only), and
    ``pixels`` the number of pixels of that scale's maps.
    """

    def __init__(
        self,
        encoder_maps: list[torch.Tensor] | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        self.encoder_maps, self.temperature, self.generator = encoder_maps, temperature, generator
        self.kl: dict[int, torch.Tensor] = {}
        self.pixels: dict[int, int] = {}


class SpatialLatent(nn.Module):
    """Latent maps at one decoder scale: a conditional prior p(z_s | features) and, with the posterior encoder's
    map at the same scale, a posterior q(z_s | features, Y); the draw is added to the features by a 1×1 conv.

    Shapes
    ------
    features (B, c, h, w), encoder map (B, c_enc, h', w') with h' <= h, w' <= w -> (B, c, h, w).
    """

    def __init__(self, channels: int, encoder_channels: int, latent_channels: int, factor: int) -> None:
        super().__init__()
        self.factor, self.latent_channels = factor, latent_channels
        self.prior = nn.Conv2d(channels, 2 * latent_channels, 3, padding=1)
        self.posterior = nn.Conv2d(channels + encoder_channels, 2 * latent_channels, 3, padding=1)
        self.inject = nn.Conv2d(latent_channels, channels, 1)

    def forward(self, x: torch.Tensor, level: int, context: SpatialContext) -> torch.Tensor:
        p_mu, p_logvar = self.prior(x).chunk(2, dim=1)
        p_logvar = p_logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        if context.encoder_maps is not None:
            enc = _pad_to(context.encoder_maps[level].to(x.dtype), tuple(x.shape[-2:]))
            mu, logvar = self.posterior(torch.cat([x, enc], dim=1)).chunk(2, dim=1)
            logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
            kl = 0.5 * (p_logvar - logvar + (logvar.exp() + (mu - p_mu) ** 2) / p_logvar.exp() - 1.0)
            context.kl[self.factor] = kl.float().sum(dim=(2, 3))
            context.pixels[self.factor] = int(x.shape[-2] * x.shape[-1])
        else:
            mu, logvar = p_mu, p_logvar
        eps = _gaussian_noise(tuple(mu.shape), mu, context.generator)
        z = mu + context.temperature * torch.exp(0.5 * logvar) * eps
        return x + self.inject(z)


class Decoder(nn.Module):
    """Generate a normalized high-resolution field from a latent code and the coarse-predictor embedding.

    Steps:

    1. seed: ``Linear([z; h_X])`` -> (base_filters, H0, W0) with H0 = ceil(H / 2^n_up), W0 = ceil(W / 2^n_up),
       then a FiLM-modulated 3×3 conv to the coarsest width;
    2. ``n_up`` :class:`UpBlock` s, each doubling the resolution, halving the width (from up to 8 × base down
       to base) and FiLM-modulated by an embedding of ``[z; h_X]``;
    3. a **center** crop of the (H0 · 2^n_up, W0 · 2^n_up) map to exactly (H, W) (an odd surplus is removed
       from the bottom/right);
    4. optionally (``use_statics``) the static maps are concatenated here;
    5. two 3×3 conv + GroupNorm + SiLU layers and a 1×1 conv to one channel, **without** output activation —
       normalized precipitation is negative on dry pixels.

    With ``latent_scales``, a :class:`SpatialLatent` after the seed or block at each of those factors draws a latent
    map (from the posterior where the pass's :class:`SpatialContext` has the encoder's maps, else from the prior).

    Parameters
    ----------
    d_z, d_x : sizes of z and h_X.
    hr_shape : (H, W), pixels.
    base_filters : width at full resolution.
    n_statics : S_ch (only used when ``use_statics``).
    use_statics : concatenate the static maps before the output layers.
    dropout : dropout probability in the conditioning MLP.

    Shapes
    ------
    z (B, d_z), h_x (B, d_x), statics (B or 1, S_ch, H, W) or None -> (B, 1, H, W) normalized precipitation.
    """

    def __init__(
        self,
        d_z: int,
        d_x: int,
        hr_shape: tuple[int, int],
        base_filters: int,
        n_statics: int = 0,
        use_statics: bool = False,
        dropout: float = 0.0,
        latent_scales: tuple[int, ...] = (),
        latent_channels: int = 4,
        encoder_channels: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.hr_shape = (int(hr_shape[0]), int(hr_shape[1]))
        self.n_up = n_scales(self.hr_shape)
        levels = {}
        for factor in latent_scales:
            level = int(math.log2(factor))
            if 2**level != factor or level > self.n_up or level >= len(encoder_channels):
                raise ValueError(
                    f"model.latent_scales: {factor} is not a power of 2 of at most {2**self.n_up} on a "
                    f"{self.hr_shape[0]} x {self.hr_shape[1]} grid (the decoder's coarsest map is {2**self.n_up}x)"
                )
            levels[level] = factor
        self.use_statics = bool(use_statics) and n_statics > 0
        factor = 2**self.n_up
        self.seed_shape = (math.ceil(self.hr_shape[0] / factor), math.ceil(self.hr_shape[1] / factor))
        d_cond = d_z + d_x
        # The seed carries only base_filters channels: a per-pixel linear map is the model's largest layer.
        self.seed_channels = base_filters
        self.seed = nn.Linear(d_cond, self.seed_channels * self.seed_shape[0] * self.seed_shape[1])
        # Shared nonlinear embedding of [z; h_X] that feeds every FiLM layer.
        cond_layers: list[nn.Module] = [nn.Linear(d_cond, d_cond), nn.SiLU()]
        if dropout > 0:
            cond_layers.append(nn.Dropout(dropout))
        self.cond = nn.Sequential(*cond_layers)

        width = _channels(base_filters, self.n_up, DECODER_WIDTH_CAP)
        self.seed_conv = nn.Conv2d(self.seed_channels, width, 3, padding=1)
        self.seed_norm = _group_norm(width)
        self.seed_film = FiLM(d_cond, width)
        self.blocks = nn.ModuleList()
        # spatial latents by decoder level (the seed is level n_up, block i outputs level n_up - 1 - i)
        self.latents = nn.ModuleDict()
        for level in range(self.n_up, -1, -1):
            if level < self.n_up:
                out = _channels(base_filters, level, DECODER_WIDTH_CAP)
                self.blocks.append(UpBlock(width, out, d_cond))
                width = out
            if level in levels:
                self.latents[str(level)] = SpatialLatent(width, encoder_channels[level], latent_channels, levels[level])

        head_in = width + (n_statics if self.use_statics else 0)
        self.head = nn.Sequential(
            nn.Conv2d(head_in, base_filters, 3, padding=1),
            _group_norm(base_filters),
            nn.SiLU(),
            nn.Conv2d(base_filters, base_filters, 3, padding=1),
            _group_norm(base_filters),
            nn.SiLU(),
        )
        self.out_conv = nn.Conv2d(base_filters, 1, 1)

    def forward(
        self,
        z: torch.Tensor,
        h_x: torch.Tensor,
        statics: torch.Tensor | None = None,
        spatial: SpatialContext | None = None,
    ) -> torch.Tensor:
        spatial = spatial or SpatialContext()
        cond_in = torch.cat([z, h_x], dim=1)
        cond = self.cond(cond_in)
        x = self.seed(cond_in).view(-1, self.seed_channels, *self.seed_shape)
        x = F.silu(self.seed_film(self.seed_norm(self.seed_conv(x)), cond))
        if str(self.n_up) in self.latents:
            x = self.latents[str(self.n_up)](x, self.n_up, spatial)
        for i, block in enumerate(self.blocks):
            x = block(x, cond)
            level = self.n_up - 1 - i
            if str(level) in self.latents:
                x = self.latents[str(level)](x, level, spatial)
        x = _center_crop(x, self.hr_shape)
        if self.use_statics:
            if statics is None:
                raise ValueError("this decoder was built with decoder_statics=True and needs the static maps")
            x = torch.cat([x, _expand_batch(statics, x.shape[0]).to(x.dtype)], dim=1)
        return self.out_conv(self.head(x))


# --------------------------------------------------------------------------------------------------------------
# The assembled model
# --------------------------------------------------------------------------------------------------------------


class CVAE(nn.Module):
    """Conditional VAE for p(Y_hr | X_lr, S).

    Parameters
    ----------
    in_channels : C, number of coarse predictor variables.
    n_statics : S_ch, number of static maps (may be 0; then ``statics`` may be None everywhere).
    lr_shape : (h, w) of the coarse grid, pixels.
    hr_shape : (H, W) of the high-resolution grid, pixels.
    config : sizes and options (``d_z``, ``base_filters``, ``d_x``, ``d_y``, ``prior``, ``decoder_statics``,
        ``dropout``).

    Notes
    -----
    Tensors: ``inputs`` (B, C, h, w) standardized; ``target`` (B, 1, H, W) normalized precipitation with invalid
    pixels already set to 0; ``statics`` (B, S_ch, H, W) or (1, S_ch, H, W), broadcast over the batch.
    With ``config.prior == "standard"`` the prior is N(0, I) and the model has no ``prior_net``.
    """

    def __init__(
        self,
        in_channels: int,
        n_statics: int,
        lr_shape: tuple[int, int],
        hr_shape: tuple[int, int],
        config: ModelConfig,
    ) -> None:
        super().__init__()
        if config.prior not in ("standard", "conditional"):
            raise ValueError(f"config.prior must be 'standard' or 'conditional', got {config.prior!r}")
        self.in_channels = int(in_channels)
        self.n_statics = int(n_statics)
        self.lr_shape = (int(lr_shape[0]), int(lr_shape[1]))
        self.hr_shape = (int(hr_shape[0]), int(hr_shape[1]))
        self.config = config
        self.d_z = config.d_z

        self.encoder_x = EncoderX(self.in_channels, config.d_x, config.base_filters, config.dropout)
        self.encoder_y = EncoderY(
            1 + self.n_statics, config.d_y, config.base_filters, n_scales(self.hr_shape), config.dropout
        )
        self.latent_head = LatentHead(config.d_y + config.d_x, config.d_z, config.dropout)
        self.prior_net = (
            ConditionalPrior(config.d_x, config.d_z, config.dropout) if config.prior == "conditional" else None
        )
        n_levels = n_scales(self.hr_shape)
        self.decoder = Decoder(
            config.d_z,
            config.d_x,
            self.hr_shape,
            config.base_filters,
            n_statics=self.n_statics,
            use_statics=config.decoder_statics,
            dropout=config.dropout,
            latent_scales=tuple(config.latent_scales),
            latent_channels=config.latent_channels,
            encoder_channels=tuple(_channels(config.base_filters, k, ENCODER_WIDTH_CAP) for k in range(n_levels + 1)),
        )

    # -- shape checks: a wrong grid should fail here with a readable message, not deep inside a conv --

    def _check(self, name: str, tensor: torch.Tensor, channels: int, shape: tuple[int, int]) -> None:
        if tensor.dim() != 4 or tensor.shape[1] != channels or tuple(tensor.shape[-2:]) != shape:
            raise ValueError(
                f"{name}: expected shape (B, {channels}, {shape[0]}, {shape[1]}), got {tuple(tensor.shape)}"
            )

    def _statics(self, statics: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if self.n_statics == 0:
            return None
        if statics is None:
            raise ValueError(f"statics: the model was built with {self.n_statics} static maps, got None")
        self._check("statics", statics, self.n_statics, self.hr_shape)
        return _expand_batch(statics, batch)

    # -- the pieces --

    def encode_x(self, inputs: torch.Tensor) -> torch.Tensor:
        """Embed the coarse predictors: (B, C, h, w) -> h_X (B, d_x)."""
        self._check("inputs", inputs, self.in_channels, self.lr_shape)
        return self.encoder_x(inputs)

    def posterior(
        self, target: torch.Tensor, statics: torch.Tensor | None, h_x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of q(z | Y, X, S).

        Parameters
        ----------
        target : (B, 1, H, W) normalized precipitation.
        statics : (B or 1, S_ch, H, W), or None when the model has no statics.
        h_x : (B, d_x) from :meth:`encode_x`.

        Returns
        -------
        mu, logvar : (B, d_z) each.
        """
        mu, logvar, _ = self._posterior(target, statics, h_x)
        return mu, logvar

    @property
    def spatial(self) -> bool:
        """Whether the model has spatial latents."""
        return len(self.decoder.latents) > 0

    def _posterior(
        self, target: torch.Tensor, statics: torch.Tensor | None, h_x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
        """:meth:`posterior`, and the encoder's feature maps when the model has spatial latents."""
        self._check("target", target, 1, self.hr_shape)
        statics = self._statics(statics, target.shape[0])
        y = target if statics is None else torch.cat([target, statics.to(target.dtype)], dim=1)
        maps = None
        if self.spatial:
            h_y, maps = self.encoder_y.features(y)
        else:
            h_y = self.encoder_y(y)
        mu, logvar = self.latent_head(torch.cat([h_y, h_x], dim=1))
        return mu, logvar, maps

    def prior(self, h_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of p(z | X): (B, d_x) -> mu, logvar (B, d_z); zeros for the standard N(0, I) prior."""
        if self.prior_net is None:
            zeros = h_x.new_zeros(h_x.shape[0], self.d_z)
            return zeros, zeros.clone()
        return self.prior_net(h_x)

    def decode(
        self,
        z: torch.Tensor,
        h_x: torch.Tensor,
        statics: torch.Tensor | None,
        spatial: SpatialContext | None = None,
    ) -> torch.Tensor:
        """(B, d_z), (B, d_x), (B or 1, S_ch, H, W) or None -> (B, 1, H, W) normalized precipitation; spatial
        latents (if any) as ``spatial`` says (default: from their prior)."""
        statics = self._statics(statics, z.shape[0]) if self.decoder.use_statics else None
        return self.decoder(z, h_x, statics, spatial)

    # -- training and sampling --

    def _decode_draws(
        self,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        h_x: torch.Tensor,
        statics: torch.Tensor | None,
        n: int,
        temperature: float,
        generator: torch.Generator | None,
        encoder_maps: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Decode ``n`` reparameterized draws of N(mu, temperature^2 exp(logvar)) per day: (B, n, 1, H, W); spatial
        latents from their posterior given ``encoder_maps``, else from their prior."""
        B = mu.shape[0]
        eps = _gaussian_noise((B, n, self.d_z), mu, generator)
        z = mu[:, None] + temperature * torch.exp(0.5 * logvar)[:, None] * eps
        # Decode all B * n draws as one batch; day b's draws are rows b*n ... b*n + n-1.
        h_rep = h_x.repeat_interleave(n, dim=0)
        statics_rep = None
        if self.decoder.use_statics:
            statics_rep = self._statics(statics, B).repeat_interleave(n, dim=0)
        maps = None if encoder_maps is None else [m.repeat_interleave(n, dim=0) for m in encoder_maps]
        spatial = SpatialContext(maps, temperature, generator)
        out = self.decoder(z.reshape(B * n, self.d_z), h_rep, statics_rep, spatial)
        return out.view(B, n, 1, *self.hr_shape)

    def forward(
        self,
        inputs: torch.Tensor,
        target: torch.Tensor,
        statics: torch.Tensor | None,
        generator: torch.Generator | None = None,
        n_prior: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Training pass: encode, draw one reparameterized posterior sample, decode it; with ``n_prior`` > 0 also
        decode that many reparameterized prior draws per day (for an ensemble loss term).

        Parameters
        ----------
        inputs : (B, C, h, w) standardized predictors.
        target : (B, 1, H, W) normalized precipitation (invalid pixels = 0).
        statics : (B or 1, S_ch, H, W), or None when the model has no statics.
        generator : source of the reparameterization noise (default: the global RNG).
        n_prior : prior draws decoded per day (0: none).

        Returns
        -------
        dict with "recon" (B, 1, H, W) normalized; "mu", "logvar" (B, d_z) of the posterior; "prior_mu",
        "prior_logvar" (B, d_z); "z" (B, d_z) the sample that was decoded; with ``n_prior`` > 0, "prior_samples"
        (B, n_prior, 1, H, W) normalized; with spatial latents "scale_kl" (factor -> (B, channels) KL of each latent
        map summed over its pixels) and "scale_pixels" (factor -> pixels of its maps).
        """
        h_x = self.encode_x(inputs)
        mu, logvar, maps = self._posterior(target, statics, h_x)
        prior_mu, prior_logvar = self.prior(h_x)
        z = mu + torch.exp(0.5 * logvar) * _gaussian_noise(tuple(mu.shape), mu, generator)
        spatial = SpatialContext(maps, 1.0, generator)
        recon = self.decode(z, h_x, statics, spatial)
        out = {
            "recon": recon,
            "mu": mu,
            "logvar": logvar,
            "prior_mu": prior_mu,
            "prior_logvar": prior_logvar,
            "z": z,
        }
        if self.spatial:
            out["scale_kl"] = spatial.kl
            out["scale_pixels"] = spatial.pixels
        if n_prior > 0:
            out["prior_samples"] = self._decode_draws(prior_mu, prior_logvar, h_x, statics, n_prior, 1.0, generator)
        return out

    def sample(
        self,
        inputs: torch.Tensor,
        statics: torch.Tensor | None,
        n_samples: int = 1,
        temperature: float = 1.0,
        mode: str = "prior",
        target: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw ``n_samples`` fields per day. Wrap in ``torch.no_grad()`` and call ``eval()`` first for inference.

        Parameters
        ----------
        inputs : (B, C, h, w) standardized predictors.
        statics : (B or 1, S_ch, H, W), or None when the model has no statics.
        n_samples : samples per day (K).
        temperature : multiplies the latent standard deviation; 0 decodes the latent mean.
        mode : "prior" — z from p(z | X) (N(0, I) for the standard prior); "posterior" — z from q(z | Y, X, S),
            which needs ``target``.
        target : (B, 1, H, W) normalized precipitation; required for ``mode="posterior"``.
        generator : source of the latent noise (default: the global RNG).

        Returns
        -------
        (B, n_samples, 1, H, W) normalized precipitation.
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        h_x = self.encode_x(inputs)
        maps = None
        if mode == "prior":
            mu, logvar = self.prior(h_x)
        elif mode == "posterior":
            if target is None:
                raise ValueError("sample(mode='posterior') needs the target field")
            mu, logvar, maps = self._posterior(target, statics, h_x)
        else:
            raise ValueError(f"mode must be 'prior' or 'posterior', got {mode!r}")
        return self._decode_draws(mu, logvar, h_x, statics, n_samples, temperature, generator, maps)


# --------------------------------------------------------------------------------------------------------------
# Size and cost
# --------------------------------------------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars in ``model``."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def flops_per_sample(
    model: CVAE,
    in_channels: int,
    n_statics: int,
    lr_shape: tuple[int, int],
    hr_shape: tuple[int, int],
    n_prior: int = 0,
) -> int:
    """Floating-point operations of one training forward pass (``model.forward``, with ``n_prior`` prior draws for an
    ensemble loss term) for a batch of one day.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts matrix products and convolutions
    (2 FLOPs per multiply-add) and ignores element-wise work (norms, activations, interpolation). A backward
    pass costs about twice as much again.

    Parameters
    ----------
    model : the model to measure (its train/eval state is restored afterwards).
    in_channels, n_statics : C and S_ch.
    lr_shape, hr_shape : (h, w) and (H, W), pixels.

    Returns
    -------
    int, FLOPs per sample.
    """
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    inputs = torch.zeros(1, in_channels, *lr_shape, device=device, dtype=dtype)
    target = torch.zeros(1, 1, *hr_shape, device=device, dtype=dtype)
    statics = torch.zeros(1, n_statics, *hr_shape, device=device, dtype=dtype) if n_statics > 0 else None
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(inputs, target, statics, n_prior=n_prior)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
