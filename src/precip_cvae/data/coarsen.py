"""Block averaging: how `prepare --coarsen` makes a coarse predictor, and how a synthetic field gets its own.

When a predictor channel is the high-resolution target itself averaged over ``factor``×``factor`` blocks (the Fraser
basin: ERA5-Land precipitation is both the 5 × coarser input and the target), `prepare` records the operator in
``variables.json`` (``"derived_from_target": {"operator": "block_mean", "factor": f}``) and the downstream experiment
applies the same function to a synthetic target, which makes a new, consistent (X, Y) pair.
"""

from __future__ import annotations

import warnings

import numpy as np

BLOCK_MEAN = "block_mean"


def block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """NaN-aware mean over ``factor``×``factor`` blocks of the last two axes, partial edge blocks included (a block
    with no finite value is NaN). ``factor`` 1 returns the values unchanged."""
    if factor == 1:
        return values
    *lead, ny, nx = values.shape
    py, px = -ny % factor, -nx % factor
    padded = np.pad(values, [(0, 0)] * len(lead) + [(0, py), (0, px)], constant_values=np.nan)
    blocks = padded.reshape(*lead, (ny + py) // factor, factor, (nx + px) // factor, factor)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": an all-NaN block stays NaN
        return np.nanmean(blocks, axis=(-3, -1))


def derivation(factor: int) -> dict:
    """The record `prepare` keeps for a channel made from the target by :func:`block_mean`."""
    how = f"NaN-aware mean of the target in mm/day over {factor}x{factor} blocks, edge blocks partial"
    return {"operator": BLOCK_MEAN, "factor": int(factor), "how": how}


def derive(record: dict, field_mm: np.ndarray) -> np.ndarray:
    """Apply a channel's recorded operator to a high-resolution field in mm/day ((..., H, W) → (..., h, w))."""
    if record.get("operator") != BLOCK_MEAN:
        raise ValueError(f"unknown coarsening operator {record.get('operator')!r}")
    return block_mean(field_mm, int(record["factor"]))
