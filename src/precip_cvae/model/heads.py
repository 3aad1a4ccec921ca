"""Output heads: what the decoder's last 1×1 convolution means.

* ``linear`` (the reference design): the channel is the normalized field itself. Nothing stops it from sitting a
  little above the dry value, so a continuous output drizzles: many pixels get a few tenths of a mm.
* ``censored``: a mixed discrete-continuous output. The channel is a latent amount ``u``; the field is
  ``max(u, dry)`` pixel by pixel, with ``dry`` the normalized value of 0 mm/day, so wherever ``u`` falls below it the
  pixel is exactly dry (a point mass at zero), and above it the amount is continuous. Which pixels are dry is then
  decided by the same latents and predictors as the amounts, so dry areas have the structure of the weather, not of
  pixel noise. Trained with the L1 reconstruction (a censored Laplace median: the median of ``max(u, dry)`` is
  ``max(median u, dry)``) and the ensemble CRPS; the gradient passes the censoring straight through, so a pixel
  predicted dry where it rained is still pulled up.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

#: The choices of ``model.output``.
OUTPUT_HEADS = ("linear", "censored")


class LinearHead(nn.Module):
    """The raw channel is the normalized field (the reference design)."""

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return raw


class CensoredHead(nn.Module):
    """``max(raw, dry)`` per pixel, with a straight-through gradient.

    Parameters
    ----------
    hr_shape : (H, W)
    dry_z : (H, W) normalized value of 0 mm/day (``Normalization.dry_z``); a buffer, so checkpoints carry it. None
        leaves it unset until ``load_state_dict`` fills it; a forward pass before that is an error.
    """

    def __init__(self, hr_shape: tuple[int, int], dry_z: np.ndarray | torch.Tensor | None = None) -> None:
        super().__init__()
        dry = torch.zeros(1, 1, *hr_shape)
        if dry_z is not None:
            dry_z = torch.as_tensor(np.asarray(dry_z, dtype=np.float32))
            if tuple(dry_z.shape) != tuple(hr_shape):
                raise ValueError(f"dry_z: expected shape {tuple(hr_shape)}, got {tuple(dry_z.shape)}")
            dry = dry_z.reshape(1, 1, *hr_shape).clone()
        self.register_buffer("dry_z", dry)
        self.ready = dry_z is not None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.ready = self.ready or prefix + "dry_z" in state_dict

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        if not self.ready:
            raise ValueError("the censored output needs the normalized 0 mm/day (dry_z): pass it or load a checkpoint")
        dry = self.dry_z.to(raw.dtype)
        # the value is exactly max(raw, dry); the gradient is that of raw everywhere (straight through the censoring:
        # raw - raw.detach() is exactly 0 and carries raw's gradient)
        return torch.where(raw >= dry, raw, dry + (raw - raw.detach()))


def build_head(kind: str, hr_shape: tuple[int, int], dry_z: np.ndarray | torch.Tensor | None = None) -> nn.Module:
    """The output head ``kind`` (one of :data:`OUTPUT_HEADS`) for an (H, W) grid."""
    if kind == "linear":
        return LinearHead()
    if kind == "censored":
        return CensoredHead(hr_shape, dry_z)
    raise ValueError(f"model.output must be one of {', '.join(OUTPUT_HEADS)}, got {kind!r}")
