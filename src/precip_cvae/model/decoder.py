"""The FiLM-conditioned decoder: a learned seed from [z; h_X], upsampling blocks, spatial latents, the output head."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from precip_cvae import slices
from precip_cvae.convs import conv_with_statics
from precip_cvae.model._layers import (
    DECODER_WIDTH_CAP,
    _center_crop,
    _channels,
    _check_statics_batch,
    _group_norm,
    n_scales,
    upsample_conv,
)
from precip_cvae.model.heads import build_head
from precip_cvae.model.latents import SpatialContext, SpatialLatent


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
        return torch.addcmul(shift, x, 1 + scale)  # shift + x * (1 + scale) in one pass over x


class UpBlock(nn.Module):
    """One decoder scale: nearest ×2 upsampling, 3×3 conv (the two fused, :func:`upsample_conv`), GroupNorm, FiLM,
    SiLU, a second 3×3 conv, plus skip.

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
        h = F.silu(self.film(self.norm1(upsample_conv(x, self.conv1)), cond))
        h = F.silu(self.norm2(self.conv2(h)))
        return h + skip


class Decoder(nn.Module):
    """Generate a normalized high-resolution field from a latent code and the coarse-predictor embedding.

    Steps:

    1. seed: ``Linear([z; h_X])`` -> (base_filters, H0, W0) with H0 = ceil(H / 2^n_up), W0 = ceil(W / 2^n_up),
       then a FiLM-modulated 3×3 conv to the coarsest width;
    2. ``n_up`` :class:`UpBlock` s, each doubling the resolution, halving the width (from up to ``width_cap`` × base
       down to base) and FiLM-modulated by an embedding of ``[z; h_X]``;
    3. a **center** crop of the (H0 · 2^n_up, W0 · 2^n_up) map to exactly (H, W) (an odd surplus is removed
       from the bottom/right);
    4. optionally (``use_statics``) the static maps are concatenated here;
    5. two 3×3 conv + GroupNorm + SiLU layers and a 1×1 conv to one channel, then the output head
       (:mod:`precip_cvae.model.heads`): ``linear`` (the reference) has no activation — normalized precipitation is
       negative on dry pixels; ``censored`` makes values below 0 mm/day exactly dry.

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
    output : the output head (``model.output``); dry_z : (H, W) normalized 0 mm/day, which ``censored`` needs.
    width_cap : the widest scale's channels, in multiples of ``base_filters`` (``model.decoder_width_cap``).
    block_width_cap : the same for the up-blocks' outputs (``model.decoder_block_width_cap``; None: ``width_cap``).

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
        output: str = "linear",
        dry_z: np.ndarray | torch.Tensor | None = None,
        width_cap: int = DECODER_WIDTH_CAP,
        block_width_cap: int | None = None,
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

        width = _channels(base_filters, self.n_up, width_cap)
        self.seed_conv = nn.Conv2d(self.seed_channels, width, 3, padding=1)
        self.seed_norm = _group_norm(width)
        self.seed_film = FiLM(d_cond, width)
        self.blocks = nn.ModuleList()
        # spatial latents by decoder level (the seed is level n_up, block i outputs level n_up - 1 - i)
        self.latents = nn.ModuleDict()
        for level in range(self.n_up, -1, -1):
            if level < self.n_up:
                out = _channels(base_filters, level, block_width_cap or width_cap)
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
        self.output = build_head(output, self.hr_shape, dry_z)

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
        tail = self._tail_start(x)
        for i, block in enumerate(self.blocks[:tail]):
            x = block(x, cond)
            level = self.n_up - 1 - i
            if str(level) in self.latents:
                x = self.latents[str(level)](x, level, spatial)
        if statics is not None:
            _check_statics_batch(statics, x.shape[0])
        # on a CPU the fine-scale tail runs over slices of the batch that fit the caches (precip_cvae.slices)
        n = slices.rows(x, self._tail_bytes(x, tail))
        return self.output(slices.over_slices(lambda *part: self._fine(*part, tail), n, x, cond, statics))

    def _fine(self, x: torch.Tensor, cond: torch.Tensor, statics: torch.Tensor | None, start: int) -> torch.Tensor:
        """The up-blocks from ``start`` on (no spatial latent among them), the crop and the layers before the output
        head: (B, C, h, w) -> (B, 1, H, W)."""
        for block in self.blocks[start:]:
            x = block(x, cond)
        x = _center_crop(x, self.hr_shape)
        x = self._head_conv(x, statics)
        for layer in itertools.islice(self.head, 1, None):  # the head after its first convolution
            x = layer(x)
        return self.out_conv(x)

    def _tail_start(self, x: torch.Tensor) -> int:
        """The first up-block of the fine-scale tail that :meth:`forward` may run over slices of the batch: the
        blocks after the last spatial latent whose output map of the whole batch outgrows the caches
        (:data:`~precip_cvae.slices.CACHE_BYTES`; ``len(self.blocks)``: only the crop and the head)."""
        start = len(self.blocks)
        height, width, level = x.shape[-2] * 2 ** len(self.blocks), x.shape[-1] * 2 ** len(self.blocks), 0
        per_map = x.shape[0] * x.element_size() * height * width
        for i in range(len(self.blocks) - 1, -1, -1):
            out = self.blocks[i].conv2.out_channels * per_map / 4 ** (len(self.blocks) - 1 - i)
            if str(level) in self.latents or out <= slices.CACHE_BYTES:
                break
            start, level = i, level + 1
        return start

    def _tail_bytes(self, x: torch.Tensor, start: int) -> int:
        """Bytes of the largest map the tail from block ``start`` computes for one field of ``x`` (the map it starts
        from)."""
        pixels = x.shape[-2] * x.shape[-1]  # each block's output has 4 x more
        sizes = [block.conv2.out_channels * pixels * 4 ** (j + 1) for j, block in enumerate(self.blocks[start:])]
        sizes.append(self.head[0].out_channels * pixels * 4 ** (len(self.blocks) - start))
        return max(sizes) * x.element_size()

    def _head_conv(self, x: torch.Tensor, statics: torch.Tensor | None) -> torch.Tensor:
        """The head's first convolution of [x; statics] (statics concatenated when ``use_statics``), without the
        concatenation: static maps given once are convolved once per batch
        (:func:`precip_cvae.convs.conv_with_statics`)."""
        conv = self.head[0]
        if not self.use_statics:
            return conv(x)
        if statics is None:
            raise ValueError("this decoder was built with decoder_statics=True and needs the static maps")
        _check_statics_batch(statics, x.shape[0])
        return conv_with_statics(conv, x, statics)
