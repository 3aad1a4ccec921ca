"""A trained generator, ready to draw: device choice, the model rebuilt from a checkpoint checked against the
dataset it will draw for, and K samples per day in mm/day. `sample`, `evaluate` and `train` use it; it imports no
stage."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from precip_cvae.checkpoint import check_against, load_checkpoint
from precip_cvae.config import REFERENCE, ModelConfig
from precip_cvae.data.dataset import PreparedData
from precip_cvae.errors import InputError
from precip_cvae.model import CVAE

#: Where `train` writes checkpoints, under ``outputs_root``, and the one `sample`/`evaluate` use by default.
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "cvae_best.pt"


def select_device(name: str) -> torch.device:
    """ "auto" → cuda, then mps, then cpu; anything else is passed to torch.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"config key train.device: {name!r} is not a device (auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"config key train.device: {name!r} requested but CUDA is not available")
    return device


def build_model(data: PreparedData, config: ModelConfig) -> CVAE:
    """A fresh cVAE for ``data``'s channels, grids and static maps."""
    return CVAE(data.n_channels, len(data.static_names), data.lr_shape, data.hr_shape, config, data.normalization.dry_z)


def build_model_from_checkpoint(state: dict[str, Any], device: str | torch.device = "cpu") -> CVAE:
    """Rebuild the model a checkpoint was trained as and load its weights (in eval mode). A key its config lacks
    (written before that option existed) takes the reference design's value, which is what it was trained as."""
    shapes = state["shapes"]
    model = CVAE(
        shapes["in_channels"], len(shapes["statics"]), tuple(shapes["lr_shape"]), tuple(shapes["hr_shape"]),
        ModelConfig(**{**REFERENCE["model"], **state["config"]["model"]}),
    )  # fmt: skip
    model.load_state_dict(state["model_state_dict"])
    return model.to(device).eval()


class Generator:
    """A trained cVAE bound to the prepared dataset it draws for.

    Parameters
    ----------
    data : the prepared dataset
    checkpoint : the checkpoint file
    device : where to run
    """

    def __init__(self, data: PreparedData, checkpoint: str | Path, device: torch.device):
        self.data, self.path, self.device = data, Path(checkpoint), device
        self.state = load_checkpoint(self.path, map_location="cpu")
        check_against(self.state, data, self.path)
        self.model = build_model_from_checkpoint(self.state, device)
        self.statics = torch.from_numpy(data.statics)[None].to(device)
        # On a CPU the decoder is memory-bound: channels-last convolutions, and the days of a batch decoded one at a
        # time so that a day's K maps stay in cache, draw about 3 x faster (benchmarks/run.py, evaluate row) than
        # one (B K)-row pass. A GPU takes the batch in one pass.
        self.days_per_pass = 1 if device.type == "cpu" else None
        if device.type == "cpu":
            self.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_outputs(
        cls, data: PreparedData, outputs_root: str | Path, checkpoint: str | Path | None, device: torch.device
    ) -> Generator:
        """``checkpoint``, or by default ``<outputs_root>/checkpoints/cvae_best.pt``."""
        path = Path(checkpoint) if checkpoint else Path(outputs_root) / CHECKPOINT_DIR / BEST_CHECKPOINT
        return cls(data, path, device)

    @property
    def epoch(self) -> int:
        """The 1-based epoch the checkpoint was saved after."""
        return int(self.state["epoch"]) + 1

    def rng(self, seed: int) -> torch.Generator:
        """A noise generator on this device, seeded."""
        return torch.Generator(device=self.device).manual_seed(seed)

    @torch.no_grad()
    def draw(
        self, days: list[int], K: int, mode: str, temperature: float, rng: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """K samples for each of ``days``.

        Returns
        -------
        inputs : (B, C, h, w) normalized predictors of the days
        z : (B, K, H, W) normalized samples, NaN outside the valid mask
        mm : (B, K, H, W) the same in mm/day
        """
        inputs, z = self._sample(days, K, mode, temperature, rng)
        z = z.cpu().numpy()
        z[:, :, ~self.data.valid_mask] = np.nan
        return inputs, z, self.data.normalization.to_mm(z)

    @torch.no_grad()
    def draw_mm(self, days: list[int], K: int, mode: str, temperature: float, rng: torch.Generator) -> torch.Tensor:
        """:meth:`draw`'s mm/day as a tensor left on this device, (B, K, H, W) float32, NaN outside the valid mask:
        the same draws (the same noise) and the same numbers, for scores computed where the samples are."""
        _, z = self._sample(days, K, mode, temperature, rng)
        mm = self.data.normalization.to_mm(z, reported=True)
        return mm.masked_fill(~torch.from_numpy(self.data.valid_mask).to(mm.device), math.nan)

    def _sample(self, days: list[int], K: int, mode: str, temperature: float, rng: torch.Generator):
        """The days' predictors (numpy) and K normalized samples of each, (B, K, H, W) float32 on this device."""
        data = self.data
        inputs = np.stack([data.inputs(i) for i in days])
        targets = np.nan_to_num(np.stack([data.target(i) for i in days]), nan=0.0)
        step = self.days_per_pass or len(days)
        z = torch.cat([
            self.model.sample(
                torch.from_numpy(inputs[s : s + step]).to(self.device), self.statics, n_samples=K,
                temperature=temperature, mode=mode, target=torch.from_numpy(targets[s : s + step]).to(self.device),
                generator=rng,
            ).float()[:, :, 0]
            for s in range(0, len(days), step)
        ])  # fmt: skip
        return inputs, z
