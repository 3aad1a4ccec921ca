"""SRDRN's transforms between physical units and the normalized values models see.

Target (precipitation): ``z = (log1p(pr_mm_per_day) - mean) / std`` per pixel, statistics of
``log1p(pr)`` over training days. Predictors: each channel standardized separately,
``x = (raw - mean_c) / std_c``, statistics pooled over the grid and the training days.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from precip_cvae.errors import InputError
from precip_cvae.fileio import read_json, save_npy

#: Smallest per-pixel std of log1p(pr) used when normalizing. A pixel that was (almost) always dry
#: in training would otherwise blow a wet test day up to millions of standard deviations.
TARGET_STD_FLOOR = 0.01

#: Smallest per-channel std of a predictor (a constant channel stays finite).
PREDICTOR_STD_FLOOR = 1e-12

#: Amounts below this (mm/day) after the inverse transform are float32 round-off of a dry pixel (a stored
#: z of an exact 0 comes back as ~1e-7), far below any gauge's resolution: they are returned as 0.
ROUND_OFF_MM_PER_DAY = 1e-4

#: Largest log1p(mm/day) any inverse transform lets through (about 3000 mm/day): an untrained or
#: extrapolating network must not overflow exp(), and one absurd pixel should cost what it says, not infinity.
LOG1P_MAX = math.log1p(3000.0)

#: How the target transform is written in checkpoints and metadata.
FORWARD = "z = (log1p(pr_mm_per_day) - mean) / std, per pixel"


def target_to_normalized(mm_per_day: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Precipitation in mm/day → normalized target.

    Parameters
    ----------
    mm_per_day : (..., H, W) precipitation in mm/day (negative values are clipped to 0; NaN stays NaN)
    mean, std : (H, W) per-pixel mean and std of log1p(mm/day) over training days

    Returns
    -------
    (..., H, W) float32 normalized values.
    """
    pr = np.maximum(np.asarray(mm_per_day, dtype=np.float64), 0.0)
    return ((np.log1p(pr) - mean) / std).astype(np.float32)


def target_to_mm_per_day(
    normalized: np.ndarray, mean: np.ndarray, std: np.ndarray, log1p_max: float = LOG1P_MAX
) -> np.ndarray:
    """Normalized target → precipitation in mm/day (never negative; NaN stays NaN).

    Parameters
    ----------
    normalized : (..., H, W) normalized target values
    mean, std : (H, W) per-pixel mean and std of log1p(mm/day)

    Returns
    -------
    (..., H, W) float32 mm/day; amounts below :data:`ROUND_OFF_MM_PER_DAY` are 0, and amounts are capped at
    ``expm1(LOG1P_MAX)`` (about 3000 mm/day).
    """
    z = np.asarray(normalized, dtype=np.float64)
    pr = np.expm1(np.minimum(z * std + mean, log1p_max))
    return np.where(pr < ROUND_OFF_MM_PER_DAY, 0.0, pr).astype(np.float32)


def threshold_to_normalized(threshold_mm_per_day: float, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The per-pixel normalized value equivalent to a physical threshold (mm/day).

    ``z >= threshold_to_normalized(t)`` holds exactly where ``pr >= t``, pixel by pixel, because the
    transform is monotonic per pixel. Comparing normalized values with one pooled number is wrong.

    Returns
    -------
    (H, W) float32.
    """
    return ((np.log1p(threshold_mm_per_day) - mean) / std).astype(np.float32)


def finalize_target_stats(count: np.ndarray, total: np.ndarray, total_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and floored std of log1p(pr) from running sums (pixels with no data: 0 and 1).

    Parameters
    ----------
    count, total, total_sq : (H, W) float64 number of valid days, sum and sum of squares of log1p(pr)
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        var = np.where(count > 0, total_sq / np.maximum(count, 1) - mean**2, 1.0)
    std = np.sqrt(np.maximum(var, 0.0))
    std = np.where(count > 0, np.maximum(std, TARGET_STD_FLOOR), 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


@dataclass(frozen=True, eq=False)
class Normalization:
    """The one owner of the target transform between mm/day and the normalized values models see.

    ``z = (log1p(mm) - mean) / std`` per pixel; the inverse is capped at :data:`LOG1P_MAX` and never negative.
    Methods take numpy arrays (float64 arithmetic, float32 results, round-off of a dry pixel returned as 0) or
    torch tensors (differentiable, on the tensor's device).

    Attributes
    ----------
    mean, std : (H, W) float32 per-pixel statistics of log1p(mm/day) over training days
    log1p_max : the cap of the inverse transform, in log1p(mm/day)
    """

    mean: np.ndarray
    std: np.ndarray
    log1p_max: float = LOG1P_MAX
    _tensors: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", np.asarray(self.mean, dtype=np.float32))
        object.__setattr__(self, "std", np.asarray(self.std, dtype=np.float32))
        if self.mean.shape != self.std.shape:
            raise ValueError(f"normalization: mean {self.mean.shape} and std {self.std.shape} differ in shape")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape)

    def _torch(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self._tensors:
            self._tensors[key] = (
                torch.from_numpy(self.mean).to(device=like.device, dtype=like.dtype),
                torch.from_numpy(self.std).to(device=like.device, dtype=like.dtype),
            )
        return self._tensors[key]

    def to_mm(self, z, reported: bool = False):
        """Normalized (..., H, W) → mm/day. numpy: float32, below :data:`ROUND_OFF_MM_PER_DAY` is 0;
        torch: differentiable, clipped at 0, or with ``reported`` the numpy path's numbers on the tensor's device
        (float64 arithmetic, round-off of a dry pixel as 0, float32). NaN stays NaN."""
        if isinstance(z, torch.Tensor):
            if reported:
                mean, std = self._torch(z.to(torch.float64))
                pr = torch.expm1((z.to(torch.float64) * std + mean).clamp(max=self.log1p_max))
                return torch.where(pr < ROUND_OFF_MM_PER_DAY, 0.0, pr).to(torch.float32)
            mean, std = self._torch(z)
            return torch.expm1((z * std + mean).clamp(max=self.log1p_max)).clamp_min(0.0)
        return target_to_mm_per_day(z, self.mean, self.std, self.log1p_max)

    def to_z(self, mm):
        """mm/day (..., H, W) → normalized (negative amounts count as 0; NaN stays NaN)."""
        if isinstance(mm, torch.Tensor):
            mean, std = self._torch(mm)
            return (torch.log1p(mm.clamp_min(0.0)) - mean) / std
        return target_to_normalized(mm, self.mean, self.std)

    def threshold_z(self, threshold_mm_per_day: float) -> np.ndarray:
        """(H, W) normalized value equivalent, pixel by pixel, to a threshold in mm/day."""
        return threshold_to_normalized(threshold_mm_per_day, self.mean, self.std)

    @property
    def dry_z(self) -> np.ndarray:
        """(H, W) float32 normalized value of 0 mm/day (what SRDRN arrays hold where there is no data)."""
        return (-self.mean / self.std).astype(np.float32)

    def cap_z(self) -> np.ndarray:
        """(H, W) normalized value of the cap: larger values all mean ``expm1(log1p_max)`` mm/day."""
        return ((self.log1p_max - self.mean) / self.std).astype(np.float32)

    # -- files of a prepared dataset -----------------------------------------------------------------------------
    MEAN_FILE = "target_log1p_mean.npy"
    STD_FILE = "target_log1p_std.npy"

    def save(self, meta: Path) -> dict[str, Any]:
        """Write the statistics into the metadata folder ``meta``; returns what normalization.json says of them."""
        save_npy(meta / self.MEAN_FILE, self.mean)
        save_npy(meta / self.STD_FILE, self.std)
        return {
            "units": "mm/day",
            "forward": FORWARD,
            "inverse": "pr_mm_per_day = max(expm1(min(z * std + mean, log1p_max)), 0)",
            "mean_file": self.MEAN_FILE,
            "std_file": self.STD_FILE,
            "std_floor": TARGET_STD_FLOOR,
            "log1p_max": self.log1p_max,
        }

    @classmethod
    def load(cls, meta: Path) -> Normalization:
        """Read what :meth:`save` wrote (and normalization.json's cap; datasets written before it get the default)."""
        arrays = []
        for name in (cls.MEAN_FILE, cls.STD_FILE):
            path = meta / name
            if not path.is_file():
                raise InputError(f"{path}: file not found (is this a dataset written by `precip-cvae prepare`?)")
            try:
                arrays.append(np.load(path, allow_pickle=False))
            except (ValueError, OSError) as err:
                raise InputError(f"{path}: not a readable .npy array ({err})") from None
        info = read_json(meta / "normalization.json").get("target", {})
        try:
            return cls(*arrays, float(info.get("log1p_max", LOG1P_MAX)))
        except ValueError as err:
            raise InputError(f"{meta}: {err}") from None

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and primitives for a checkpoint (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "target_log1p_mean": torch.from_numpy(self.mean.copy()),
            "target_log1p_std": torch.from_numpy(self.std.copy()),
            "log1p_max": float(self.log1p_max),
            "forward": FORWARD,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Normalization:
        """The inverse of :meth:`state_dict` (checkpoints written before the cap was stored get the default)."""

        def array(value):
            return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)

        return cls(
            array(state["target_log1p_mean"]),
            array(state["target_log1p_std"]),
            float(state.get("log1p_max", LOG1P_MAX)),
        )

    def differences(self, other: Normalization) -> list[str]:
        """What differs from ``other`` (empty when the two transforms are the same, bit for bit)."""
        out = []
        if self.shape != other.shape:
            return [f"grid {self.shape} vs {other.shape}"]
        if not np.array_equal(self.mean, other.mean):
            out.append(f"per-pixel mean (largest difference {np.abs(self.mean - other.mean).max():.3g})")
        if not np.array_equal(self.std, other.std):
            out.append(f"per-pixel std (largest difference {np.abs(self.std - other.std).max():.3g})")
        if self.log1p_max != other.log1p_max:
            out.append(f"cap log1p_max {self.log1p_max:g} vs {other.log1p_max:g}")
        return out
