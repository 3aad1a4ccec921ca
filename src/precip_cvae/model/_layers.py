"""Building blocks shared by the model's parts: constants, small layers and tensor helpers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Bounds on every predicted log-variance. exp(-12) ~ 6e-6 and exp(8) ~ 3e3: wide enough never to bind in a
#: healthy run, narrow enough that exp() cannot overflow in float16 and the KL term stays finite.
LOGVAR_MIN = -12.0
LOGVAR_MAX = 8.0

#: Feature maps are pooled to this size before the encoders' MLPs, whatever the grid.
POOL_SIZE = 4

#: Target side (pixels) of the decoder's seed and of the encoder's coarsest map.
SEED_MIN_SIDE = 6

#: Width caps, in multiples of base_filters (the decoder's is ``model.decoder_width_cap``; this is its default). With 2,
#: the decoder's coarse scales cost a quarter of the scale below them each; the posterior encoder, which only
#: summarizes a field into one vector, stays at 4.
DECODER_WIDTH_CAP = 2
ENCODER_WIDTH_CAP = 4


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


def fit_latent_scales(scales: tuple[int, ...], hr_shape: tuple[int, int]) -> tuple[int, ...]:
    """The spatial-latent factors a grid can hold: ``scales`` as given when the largest is at most the decoder's
    coarsest factor ``2^n_scales``, else all divided by the same power of 2 so that the largest is that coarsest
    factor (factors below 1 dropped). (8, 4) stays (8, 4) on a 96 x 84 grid and becomes (2, 1) on 19 x 29.
    """
    scales = tuple(int(f) for f in scales)
    if not scales:
        return ()
    for f in scales:
        if f < 1 or f & (f - 1):
            raise ValueError(f"model.latent_scales: {f} is not a power of 2")
    top = 2 ** n_scales(hr_shape)
    largest = max(scales)
    if largest <= top:
        return scales
    shift = largest // top  # both are powers of 2
    return tuple(sorted({f // shift for f in scales if f >= shift}, reverse=True))


def _channels(base_filters: int, level: int, cap: int = 8) -> int:
    """Width at ``level`` factor-2 steps below full resolution: doubles per step, capped at ``cap`` × base."""
    return base_filters * min(2**level, cap)


#: device types whose autocast runs GroupNorm in float32 whatever its input (CUDA's autocast lists group_norm among
#: the float32 ops; a CPU's autocast keeps the input's type)
GROUP_NORM_UPCAST = {"cuda"}


class GroupNorm(nn.GroupNorm):
    """:class:`torch.nn.GroupNorm` that, under bf16 autocast on a GPU, normalizes bf16 maps in bf16.

    CUDA's autocast runs group_norm in float32: a bf16 map from a convolution is copied to float32, normalized, and
    the FiLM and SiLU after it then run in float32 until the next convolution copies the map back to bf16. On the
    decoder's full-resolution maps of 16 channels, where those element-wise passes set the time, that moves about 40
    bytes per element forward against 28 for the same layers in float32 (TF32): a likely cause of bf16 autocast
    training slower than TF32 (0.64-0.91 x on an H200, measured before this layer). Here the layer normalizes in the
    map's type (the kernel accumulates its statistics in float32; the weights are cast to bf16 for the call, their
    gradients come back in float32), so the layers after it stay in bf16 too: about 14 bytes per element. Elsewhere
    it is the plain layer, and checkpoints are the same.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if x.dtype != torch.bfloat16 or device not in GROUP_NORM_UPCAST or not torch.is_autocast_enabled(device):
            return super().forward(x)
        weight = None if self.weight is None else self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        with torch.autocast(device, enabled=False):
            return F.group_norm(x, self.num_groups, weight, bias, self.eps)


def _group_norm(channels: int) -> GroupNorm:
    """GroupNorm with up to 8 groups of at least 4 channels where possible (1 group for very narrow layers)."""
    groups = max(1, min(8, channels // 4))
    while channels % groups:
        groups -= 1
    return GroupNorm(groups, channels)


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


def _check_statics_batch(statics: torch.Tensor, batch: int) -> None:
    """Raise unless the static maps are given once (batch 1) or per day (``batch``)."""
    if statics.shape[0] not in (1, batch):
        raise ValueError(f"statics batch size {statics.shape[0]} must be 1 or equal to the batch size {batch}")


def _expand_batch(statics: torch.Tensor, batch: int) -> torch.Tensor:
    """Broadcast statics given once, (1, S_ch, H, W), to (batch, S_ch, H, W) without copying."""
    _check_statics_batch(statics, batch)
    return statics if statics.shape[0] == batch else statics.expand(batch, *statics.shape[1:])


def _upsampled_taps(k: torch.Tensor, dim: int) -> torch.Tensor:
    """The 4 taps along ``dim`` of a stride-2 transposed convolution equal to nearest x2 upsampling followed by
    the 3 taps ``k`` (w0, w1, w2) along ``dim``: (w2, w1 + w2, w0 + w1, w0)."""
    w0, w1, w2 = k.unbind(dim)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim=dim)


def upsample_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(nearest_upsample_x2(x))`` for a 3 x 3, stride-1, padding-1 ``conv``, computed from the coarse map.

    Output row r of the upsampled map's convolution reads upsampled rows r - 1, r, r + 1, i.e. coarse rows
    floor((r - 1) / 2) .. floor((r + 1) / 2); grouping the taps that land on the same coarse row makes it a
    transposed convolution of ``x`` with stride 2, padding 1 and a 4 x 4 kernel whose taps are sums of the 3 x 3
    ones (:func:`_upsampled_taps` along both axes). The same function (to float rounding), with 4 instead of 9
    multiply-adds per output pixel and input channel, no upsampled copy of ``x`` and no interleaving of phases (the
    transposed convolution writes the fine grid directly; on a CPU it ran 1.3-2 x faster than four phase
    convolutions and a pixel shuffle). ``conv``'s weights are used as they are, so checkpoints do not change.

    Shapes
    ------
    x (B, c_in, h, w) -> (B, c_out, 2h, 2w).
    """
    kernel = _upsampled_taps(_upsampled_taps(conv.weight, 2), 3)  # (c_out, c_in, 4, 4)
    return F.conv_transpose2d(x, kernel.transpose(0, 1), conv.bias, stride=2, padding=1)


def _gaussian_noise(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``like``'s device and dtype.

    The noise is drawn on the generator's own device and then moved, so a CPU generator gives the same draws
    for a model on any device. ``generator`` may also be a :class:`precip_cvae.distributed.RankNoise` (anything with
    a ``randn(shape)``): one rank's rows of the noise of a global batch.
    """
    source = generator if generator is not None else like.device
    return draw_noise(shape, source).to(device=like.device, dtype=like.dtype)


def draw_noise(shape: tuple[int, ...], source) -> torch.Tensor:
    """Standard normal float32 noise of ``shape`` from ``source``: a :class:`torch.Generator` (on its device), anything
    with a ``randn(shape)`` (:class:`precip_cvae.distributed.RankNoise`, :mod:`precip_cvae.compiled`'s noise sources),
    or a device (the global generator there)."""
    if hasattr(source, "randn"):
        return source.randn(shape)
    if isinstance(source, torch.Generator):
        return torch.randn(shape, generator=source, device=source.device, dtype=torch.float32)
    return torch.randn(shape, device=source, dtype=torch.float32)


def _pad_to(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Zero-pad (B, C, h, w) centrally to ``shape`` (>= (h, w)), as the decoder's larger map is cropped centrally."""
    dh, dw = shape[0] - x.shape[-2], shape[1] - x.shape[-1]
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
