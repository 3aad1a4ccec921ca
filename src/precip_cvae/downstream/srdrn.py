"""SRDRN: the super-resolution deep residual network of Wang et al. (2021), for any pair of grid sizes.

Wang, F., Tian, D., Lowe, L., Kalin, L. & Lehrter, J. (2021). Deep learning for daily precipitation and
temperature downscaling. Water Resources Research, 57, e2020WR029308.

Layout (SRGAN-like generator, deterministic)::

    X_lr (B, C, h, w)
      -> conv3x3 + PReLU                                   "stem", kept for the global skip
      -> n_blocks x [conv3x3-BN-PReLU-conv3x3-BN + skip]
      -> conv3x3-BN + global skip
      -> upsampling stages, each conv3x3 (F -> F * f^2) -> PixelShuffle(f) -> PReLU, f in {2, 3}
      -> center crop to (H, W)
      -> [concat statics (S, H, W)] -> conv3x3 (F + S -> F) + PReLU
      -> conv9x9 (F -> n_outputs)                          no output activation
      -> (n_outputs > 1 only) non-crossing quantile transform

The network works in the normalized target space ``z = (log1p(mm/day) - mean) / std``.

Upsampling for any h x w -> H x W: the needed integer ratio is ``r = max(ceil(H / h), ceil(W / w))``; the
stages use the smallest product of factors 2 and 3 that is >= r (e.g. 4 -> 2*2, 5 -> 2*3, 9 -> 3*3, 10 -> 2*2*3,
12 -> 2*2*3). Both axes get the same stages (so the upsampled map is at least H x W), and the map is then
center-cropped to exactly H x W. The factors of 2 come first: the wide conv before each shuffle then runs on
the smallest maps. With ``r == 1`` (target not larger than the input) there is no stage, only the crop.

Deviations from the published Keras model, all deliberate:

* PixelShuffle (sub-pixel conv) replaces UpSampling2D after the stage conv; it is learned, not a copy.
* The fusion conv before the last conv is always present (with or without statics), so that runs with and
  without static maps differ only in its input channels.
* Convs followed by BatchNorm have no bias (BN's shift makes it redundant and its gradient would be 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from precip_cvae import slices
from precip_cvae.convs import conv_with_statics, single_output_conv

__all__ = ["SRDRN", "count_parameters", "recalibrate_batchnorm", "set_bn_momentum", "upsampling_factors"]

#: Keras' BatchNormalization(momentum=0.5) of the original code; PyTorch's momentum is 1 - Keras'.
BN_MOMENTUM = 0.5

#: Kernel of the last conv, as in SRGAN/SRDRN: a wide receptive field on the high-resolution grid.
FINAL_KERNEL = 9


def upsampling_factors(lr_shape: tuple[int, int], hr_shape: tuple[int, int]) -> tuple[int, ...]:
    """Upsampling factors (each 2 or 3, twos first) whose product is the smallest 2^a 3^b >= the needed ratio.

    Parameters
    ----------
    lr_shape : (h, w) coarse grid, pixels
    hr_shape : (H, W) fine grid, pixels

    Returns
    -------
    tuple of ints, empty when ``H <= h`` and ``W <= w``.
    """
    (h, w), (H, W) = lr_shape, hr_shape
    if min(h, w, H, W) < 1:
        raise ValueError(f"grid sizes must be positive, got lr {lr_shape}, hr {hr_shape}")
    ratio = max(math.ceil(H / h), math.ceil(W / w))
    best = (ratio.bit_length(), 0)  # (a, b): 2^a alone always suffices; look for a smaller 2^a 3^b >= ratio
    b = 0
    while 3**b < 3 * ratio:  # integer search, no float logs
        a = 0
        while 2**a * 3**b < ratio:
            a += 1
        if 2**a * 3**b < 2 ** best[0] * 3 ** best[1]:
            best = (a, b)
        b += 1
    return (2,) * best[0] + (3,) * best[1]


def center_crop(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Crop the last two dimensions of ``x`` (…, H', W') to their centered ``shape`` (H, W), H <= H', W <= W'."""
    H, W = shape
    top = (x.shape[-2] - H) // 2
    left = (x.shape[-1] - W) // 2
    return x[..., top : top + H, left : left + W]


class _ResidualBlock(nn.Module):
    """conv3x3-BN-PReLU-conv3x3-BN plus the identity: (B, F, h, w) -> (B, F, h, w)."""

    def __init__(self, filters: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(filters, filters, 3, padding=1, bias=False),
            nn.BatchNorm2d(filters, momentum=BN_MOMENTUM),
            nn.PReLU(filters),
            nn.Conv2d(filters, filters, 3, padding=1, bias=False),
            nn.BatchNorm2d(filters, momentum=BN_MOMENTUM),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _UpsampleStage(nn.Module):
    """conv3x3 (F -> F f^2) -> PixelShuffle(f) -> PReLU: (B, F, h, w) -> (B, F, f h, f w)."""

    def __init__(self, filters: int, factor: int):
        super().__init__()
        self.conv = nn.Conv2d(filters, filters * factor**2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(factor)
        self.act = nn.PReLU(filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shuffle(self.conv(x)))


def monotone_quantiles(raw: torch.Tensor) -> torch.Tensor:
    """Non-crossing quantiles from raw outputs: q_0 = raw_0, q_k = raw_0 + sum_{j=1..k} softplus(raw_j).

    Parameters
    ----------
    raw : (B, Q, H, W)

    Returns
    -------
    (B, Q, H, W) with ``out[:, k + 1] >= out[:, k]`` everywhere (softplus >= 0 and rounding is monotone).
    """
    first = raw[:, :1]
    steps = torch.cumsum(F.softplus(raw[:, 1:]), dim=1)
    return torch.cat([first, first + steps], dim=1)


class SRDRN(nn.Module):
    """Super-resolution deep residual network, h x w -> H x W, predicting normalized precipitation.

    Parameters
    ----------
    in_channels : number C of standardized coarse predictors
    lr_shape : (h, w) coarse grid, pixels
    hr_shape : (H, W) fine grid, pixels
    n_statics : number S of static maps on the fine grid (0: none)
    filters : feature channels F (64 in the paper)
    n_blocks : residual blocks (16 in the paper)
    n_outputs : 1 for a deterministic field; Q > 1 for Q non-crossing quantiles (increasing along dim 1)

    Attributes
    ----------
    factors : the upsampling factors, see :func:`upsampling_factors`
    final : the last conv (F -> n_outputs), whose output is the raw prediction
    """

    def __init__(
        self,
        in_channels: int,
        lr_shape: tuple[int, int],
        hr_shape: tuple[int, int],
        n_statics: int = 0,
        filters: int = 64,
        n_blocks: int = 16,
        n_outputs: int = 1,
    ):
        super().__init__()
        if in_channels < 1 or filters < 1 or n_blocks < 0 or n_outputs < 1 or n_statics < 0:
            raise ValueError(
                f"bad SRDRN sizes: in_channels={in_channels}, filters={filters}, n_blocks={n_blocks}, "
                f"n_outputs={n_outputs}, n_statics={n_statics}"
            )
        self.lr_shape = (int(lr_shape[0]), int(lr_shape[1]))
        self.hr_shape = (int(hr_shape[0]), int(hr_shape[1]))
        self.n_statics = n_statics
        self.n_outputs = n_outputs
        self.factors = upsampling_factors(self.lr_shape, self.hr_shape)

        self.stem = nn.Sequential(nn.Conv2d(in_channels, filters, 3, padding=1), nn.PReLU(filters))
        self.blocks = nn.Sequential(*[_ResidualBlock(filters) for _ in range(n_blocks)])
        self.post = nn.Sequential(
            nn.Conv2d(filters, filters, 3, padding=1, bias=False), nn.BatchNorm2d(filters, momentum=BN_MOMENTUM)
        )
        self.upsample = nn.Sequential(*[_UpsampleStage(filters, f) for f in self.factors])
        self.fuse = nn.Sequential(nn.Conv2d(filters + n_statics, filters, 3, padding=1), nn.PReLU(filters))
        self.final = nn.Conv2d(filters, n_outputs, FINAL_KERNEL, padding=FINAL_KERNEL // 2)

    def forward(self, inputs: torch.Tensor, statics: torch.Tensor | None = None) -> torch.Tensor:
        """Downscale one batch.

        Parameters
        ----------
        inputs : (B, C, h, w) standardized coarse predictors
        statics : (B or 1, S, H, W) static maps on the fine grid, required iff ``n_statics > 0`` (with
            ``n_statics == 0``: None or an empty (B or 1, 0, H, W) tensor)

        Returns
        -------
        (B, n_outputs, H, W) normalized precipitation (quantiles in increasing order when n_outputs > 1)
        """
        if inputs.ndim != 4 or tuple(inputs.shape[-2:]) != self.lr_shape:
            raise ValueError(f"inputs: expected (B, C, {self.lr_shape[0]}, {self.lr_shape[1]}), got {inputs.shape}")
        x = self.stem(inputs)
        x = self.post(self.blocks(x)) + x  # global skip (the last BatchNorm: below it each field is computed alone)
        if self.n_statics > 0:
            statics = self._check_statics(statics, x)
        elif statics is not None and statics.shape[1] != 0:  # an empty (B, 0, H, W) stack is fine
            raise ValueError(f"statics {tuple(statics.shape)} given to an SRDRN built with n_statics=0")
        else:
            statics = None
        # on a CPU the fine grid's layers run over slices of the batch that fit the caches (precip_cvae.slices)
        pixels = math.prod(self.lr_shape) * math.prod(self.factors) ** 2
        # per field: the fusion's F + S input channels on the uncropped upsampled grid, a bound on the largest map
        # (the last stage's F channels there; the fusion no longer concatenates, see _fine)
        n = slices.rows(x, self.fuse[0].in_channels * pixels * x.element_size())
        raw = slices.over_slices(self._fine, n, x, statics)
        return monotone_quantiles(raw) if self.n_outputs > 1 else raw

    def _fine(self, x: torch.Tensor, statics: torch.Tensor | None) -> torch.Tensor:
        """Upsampling, the crop, the static maps and the last two convolutions: (B, F, h, w) -> (B, n_outputs, H, W).

        The last stage's PReLU acts on each pixel alone, so it runs after the crop, on the pixels kept; the fusion
        convolution of [x; statics] is computed without the concatenation and the last convolution, to one channel,
        as per-channel convolutions on a CPU (:mod:`precip_cvae.convs`): the same function, on fewer pixels."""
        if self.factors:
            for stage in self.upsample[:-1]:
                x = stage(x)
            last = self.upsample[-1]
            x = last.act(center_crop(last.shuffle(last.conv(x)), self.hr_shape))
        else:
            x = center_crop(x, self.hr_shape)
        conv, act = self.fuse
        x = act(conv(x) if statics is None else conv_with_statics(conv, x, statics))
        return single_output_conv(self.final, x)

    def _check_statics(self, statics: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """Statics (B or 1, S, H, W) in ``x``'s dtype and device (given once, they stay once: see :meth:`_fine`)."""
        expected = (self.n_statics, *self.hr_shape)
        if statics is None:
            raise ValueError(f"this SRDRN needs statics of shape (B or 1, {', '.join(map(str, expected))})")
        if statics.ndim != 4 or tuple(statics.shape[1:]) != expected or statics.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"statics: expected (B or 1, {', '.join(map(str, expected))}), got {statics.shape}")
        return statics.to(dtype=x.dtype, device=x.device)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Set every BatchNorm layer's momentum (PyTorch's convention: the weight of the newest batch)."""
    for bn in _batchnorms(model):
        bn.momentum = momentum


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, forward: Callable[[nn.Module, Any], Any]) -> int:
    """Re-estimate every BatchNorm layer's running statistics as the plain average over ``batches``.

    With a momentum of 0.5 the statistics used at test time are those of the last few training batches; after this
    they are the mean of the per-batch means and (unbiased) variances over all of ``batches``, through PyTorch's
    cumulative average (``momentum=None``). Weights do not change. Returns the number of batches seen.
    """
    layers = _batchnorms(model)
    if not layers:
        return 0
    saved = [bn.momentum for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
    was_training = model.training
    model.train()
    n = 0
    try:
        for batch in batches:
            forward(model, batch)
            n += 1
    finally:
        for bn, momentum in zip(layers, saved, strict=True):
            bn.momentum = momentum
        model.train(was_training)
    return n
