"""Mass conservation of drawn samples (``sampling.preserve_mass``): a synthetic day rescaled so that its precipitation
totals equal the real day's it was drawn for.

A posterior draw of a heavy day can carry more (or less) water than the day it stands for: the demo's and the Fraser
basin's generators draw heavy training days about 1.1 × too wet (README, "The downstream experiment"). Paired with
the real day's coarse input, such a target teaches a downstream model a wet bias, and when the input is the target
coarsened (``prepare --coarsen``) the pair is not even consistent: the synthetic field does not average to its own
input. The rescaling is multiplicative, so dry pixels stay dry and the spatial pattern within a region is kept (the
multiplicative constraint layer of Harder et al., "Hard-constrained deep learning for climate downscaling", 2023,
applied to samples instead of a network's output):

- ``none``: samples as drawn;
- ``domain``: one factor per sample, its land total over valid pixels equal to the real day's (the gate's mass ratio
  becomes 1);
- ``cells``: one factor per coarse cell of the ``prepare --coarsen`` operator recorded in ``variables.json``, so that
  the synthetic field block-averages to the real day's coarse precipitation: a sample paired with the real day's
  input is then a consistent (X, Y) pair. A cell where the sample is dry and the real day is not cannot be rescaled
  and is left as drawn (counted in ``unscaled_cells``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from precip_cvae.config import PRESERVE_MASS
from precip_cvae.data.coarsen import BLOCK_MEAN
from precip_cvae.errors import InputError
from precip_cvae.quality import mass_ratio

if TYPE_CHECKING:
    from precip_cvae.data.dataset import PreparedData


def cell_factor(data: PreparedData) -> int:
    """The block size of the coarsening that `prepare --coarsen` recorded for this dataset's predictors, which
    ``cells`` conserves; an :class:`~precip_cvae.errors.InputError` naming ``variables.json`` when there is none."""
    records = [v.get("derived_from_target") for v in data.variables]
    factors = {int(r["factor"]) for r in records if r and r.get("operator") == BLOCK_MEAN}
    if len(factors) != 1:
        where = data.root / "metadata" / "variables.json"
        raise InputError(
            f"sampling.preserve_mass=cells: {where} records "
            + ("no predictor block-averaged from the target (`prepare --coarsen`)" if not factors
               else f"block sizes {sorted(factors)}, not one")
            + "; use domain"
        )  # fmt: skip
    return factors.pop()


def _block_sums(values: np.ndarray, factor: int) -> np.ndarray:
    """Sums over ``factor`` × ``factor`` blocks of the last two axes, partial edge blocks included (zero padding)."""
    *lead, ny, nx = values.shape
    padded = np.pad(values, [(0, 0)] * len(lead) + [(0, -ny % factor), (0, -nx % factor)])
    blocks = padded.reshape(*lead, padded.shape[-2] // factor, factor, padded.shape[-1] // factor, factor)
    return blocks.sum(axis=(-3, -1))


def conserve(
    samples_mm: np.ndarray,
    real_mm: np.ndarray,
    valid: np.ndarray,
    land: np.ndarray,
    mode: str,
    factor: int | None = None,
) -> tuple[np.ndarray, dict]:
    """Rescale the K samples of one day to the real day's totals.

    Parameters
    ----------
    samples_mm : (K, H, W) mm/day, NaN outside ``valid``
    real_mm : (H, W) the real day in mm/day, NaN where it has no data
    valid, land : (H, W) bool: the pixels a sample has, and the land among them (``domain`` sums over land, as the
        gate's mass ratio does; ``cells`` over every valid pixel, as the coarsening averaged them)
    mode : one of :data:`~precip_cvae.config.PRESERVE_MASS`
    factor : the block size of ``cells`` (:func:`cell_factor`)

    Returns
    -------
    The rescaled samples (float32, NaN where they were NaN) and, per sample, ``drawn_mass_ratio`` (the land-total
    ratio before rescaling) and ``unscaled_cells`` (``cells``: wet real cells the dry sample could not match).
    """
    if mode not in PRESERVE_MASS:
        raise InputError(f"sampling.preserve_mass: must be one of {', '.join(PRESERVE_MASS)}, got {mode!r}")
    samples = np.asarray(samples_mm, np.float64)
    has_data = np.isfinite(real_mm)
    over_land = land & has_data
    drawn = [mass_ratio(s, real_mm, over_land) for s in samples]
    unscaled = [0] * len(samples)
    if mode == "domain":
        scale = np.array([1.0 / r if np.isfinite(r) and r > 0 else 1.0 for r in drawn])
        samples = samples * scale[:, None, None]
    elif mode == "cells":
        if not factor:
            raise ValueError("preserve_mass=cells needs the coarsening's block size")
        use = valid & has_data
        s_sum = _block_sums(np.where(use, np.nan_to_num(samples), 0.0), factor)
        r_sum = _block_sums(np.where(use, np.nan_to_num(real_mm.astype(np.float64)), 0.0), factor)
        scalable = s_sum > 0
        unscaled = [int(n) for n in ((~scalable) & (r_sum > 0)).sum(axis=(-2, -1))]
        block_scale = np.where(scalable, r_sum / np.where(scalable, s_sum, 1.0), 1.0)
        H, W = real_mm.shape
        pixel_scale = np.repeat(np.repeat(block_scale, factor, axis=-2), factor, axis=-1)[..., :H, :W]
        samples = samples * pixel_scale
    info = {"drawn_mass_ratio": drawn, "unscaled_cells": unscaled}
    return samples.astype(np.float32), info
