"""Convolutions computed another way: the same function as the layer, with less work or faster kernels on a CPU.

Both networks that end on a full-resolution grid (the cVAE's decoder and the downstream SRDRN) feed a convolution
with their features and the static maps, and SRDRN ends on a convolution to one channel; the layers' weights are used
as they are, so checkpoints do not change, and the results agree with the plain layer to float rounding
(``tests/test_convs.py``, float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PER_CHANNEL_ON_CPU", "conv_with_statics", "single_output_conv"]

#: whether :func:`single_output_conv` computes per channel on a CPU (``benchmarks/srdrn_speed.py`` turns it off for
#: the reference it measures against)
PER_CHANNEL_ON_CPU = True


def conv_with_statics(conv: nn.Conv2d, x: torch.Tensor, statics: torch.Tensor) -> torch.Tensor:
    """``conv(cat([x, statics], dim=1))`` without the concatenation.

    A convolution of concatenated channels is the sum of each part's convolution with its slice of the kernel, so
    static maps given once for the batch, (1, S, H, W), are convolved once and broadcast rather than copied B times
    into a concatenated map (on a CPU, profiled, the concatenation and its conversion to channels-last took a third of
    a cVAE draw and a sixth of an SRDRN training step at the synthetic benchmark's grid). The bias goes with ``x``'s
    part.

    Shapes
    ------
    x (B, C, H, W), statics (1 or B, S, H, W) with ``C + S == conv.in_channels`` -> (B, conv.out_channels, H', W').
    """
    c = x.shape[1]
    if c + statics.shape[1] != conv.in_channels or statics.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"conv_with_statics: x {tuple(x.shape)} and statics {tuple(statics.shape)} do not make the "
                         f"{conv.in_channels} input channels of a batch of {x.shape[0]}")  # fmt: skip
    fields = F.conv2d(x, conv.weight[:, :c], conv.bias, conv.stride, conv.padding, conv.dilation)
    return fields + F.conv2d(statics.to(x.dtype), conv.weight[:, c:], None, conv.stride, conv.padding, conv.dilation)


def single_output_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a convolution to one channel; on a CPU as a depthwise convolution and a sum over channels.

    oneDNN's convolution to one channel is slow on a CPU: SRDRN's last layer (9 × 9, 16 channels to 1) ran forward
    at 6-9 GFLOP/s, and 4-7 × faster as 16 per-channel convolutions summed (forward and backward 1.1-1.8 ×; one
    thread, batch 64 of 14 × 31 and 4 of 156 × 132, channels-last). On an accelerator, with other strides or groups,
    or with more output channels (per-channel convolutions for 4 outputs were 2-4 × slower), the layer runs as it
    is.
    """
    if (not PER_CHANNEL_ON_CPU or x.device.type != "cpu" or conv.out_channels != 1 or conv.groups != 1
            or conv.stride != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str)):  # fmt: skip
        return conv(x)
    c = x.shape[1]
    per_channel = F.conv2d(x, conv.weight.reshape(c, 1, *conv.weight.shape[2:]), None, 1, conv.padding,
                           conv.dilation, groups=c)  # fmt: skip
    out = per_channel.sum(dim=1, keepdim=True)
    return out if conv.bias is None else out + conv.bias.view(1, 1, 1, 1)
