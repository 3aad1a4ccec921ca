"""Running the full-resolution end of a network over slices of its batch, so that on a CPU each slice's maps stay in
the caches.

A batch's full-resolution maps outgrow a CPU's caches long before its memory: on 2 cores with 32 MiB of L3, a 3 × 3,
16 → 16 convolution forward and backward (NCHW) ran at 38 GFLOP/s on 24 maps of 160 × 144 in one call and at 108 in
four calls of 6 maps. Where every operation acts on each field alone (convolutions, GroupNorm, PReLU, pixel
shuffles; not BatchNorm in training), computing the fine end of a network slice by slice gives the same result, and
the slices' maps are read back from the caches rather than from memory. On an accelerator, or while
``torch.compile`` traces (its generated kernels fuse across the slices), the batch is computed whole.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: the bytes of the largest map of one slice, on a CPU. Measured on 2 cores with 32 MiB of L3 (training steps and a
#: day's 16 draws at the reference geometry and the demo size): 4, 6 and 8 MiB within the machine's noise of each
#: other, 16 MiB and whole batches of 8 MiB and more 1.3-2 x slower.
CACHE_BYTES = 6 * 2**20


def rows(x: torch.Tensor, bytes_per_field: float) -> int:
    """How many fields of ``x``'s batch to compute at once, when one field's largest map takes ``bytes_per_field``:
    all of them on an accelerator or while compiling, else as many as fit :data:`CACHE_BYTES` (at least 1)."""
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return x.shape[0]
    return max(1, min(x.shape[0], int(CACHE_BYTES // bytes_per_field)))


def over_slices(fn: Callable[..., torch.Tensor], n: int, x: torch.Tensor, *others: torch.Tensor | None) -> torch.Tensor:
    """``fn(x, *others)`` computed on slices of ``n`` fields of the batch and concatenated along it. ``others`` with
    ``x``'s batch size are sliced alike; None and tensors of batch 1 (maps given once for every field) pass whole."""
    if n >= x.shape[0]:
        return fn(x, *others)
    batch = x.shape[0]
    parts = []
    for start in range(0, batch, n):
        sliced = [o[start : start + n] if o is not None and o.shape[0] == batch != 1 else o for o in others]
        parts.append(fn(x[start : start + n], *sliced))
    return torch.cat(parts)
