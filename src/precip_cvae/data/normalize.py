"""SRDRN's transforms between physical units and the normalized values models see.

Target (precipitation): ``z = (log1p(pr_mm_per_day) - mean) / std`` per pixel, statistics of
``log1p(pr)`` over training days. Predictors: each channel standardized separately,
``x = (raw - mean_c) / std_c``, statistics pooled over the grid and the training days.
"""

from __future__ import annotations

import numpy as np

#: Smallest per-pixel std of log1p(pr) used when normalizing. A pixel that was (almost) always dry
#: in training would otherwise blow a wet test day up to millions of standard deviations.
TARGET_STD_FLOOR = 0.01

#: Smallest per-channel std of a predictor (a constant channel stays finite).
PREDICTOR_STD_FLOOR = 1e-12

#: Amounts below this (mm/day) after the inverse transform are float32 round-off of a dry pixel (a stored
#: z of an exact 0 comes back as ~1e-7), far below any gauge's resolution: they are returned as 0.
ROUND_OFF_MM_PER_DAY = 1e-4


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


def target_to_mm_per_day(normalized: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Normalized target → precipitation in mm/day (never negative; NaN stays NaN).

    Parameters
    ----------
    normalized : (..., H, W) normalized target values
    mean, std : (H, W) per-pixel mean and std of log1p(mm/day)

    Returns
    -------
    (..., H, W) float32 mm/day; amounts below :data:`ROUND_OFF_MM_PER_DAY` are 0.
    """
    z = np.asarray(normalized, dtype=np.float64)
    pr = np.expm1(z * std + mean)
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
