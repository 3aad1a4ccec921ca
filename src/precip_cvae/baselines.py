"""Reference ensembles to score the generator against, on the same days: analogs, climatology, the oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from precip_cvae.data.dataset import PreparedData
from precip_cvae.errors import InputError


class AnalogEnsemble:
    """The K pool days whose coarse inputs are nearest (Euclidean distance of X_lr standardized per channel and
    grid point over the pool days); their observed high-resolution fields form the ensemble.

    Parameters
    ----------
    data : the prepared dataset
    pool : day ids to draw analogs from (the training period for test days; never the evaluated days)
    K : members
    """

    def __init__(self, data: PreparedData, pool: list[int], K: int):
        if len(pool) < K:
            raise InputError(f"analog ensemble: {len(pool)} pool days for K={K}")
        self.data, self.pool, self.K = data, np.asarray(pool), K
        inputs = np.stack([data.inputs(i) for i in pool]).astype(np.float64)  # (P, C, h, w)
        self.mean = inputs.mean(axis=0)
        self.std = np.where(inputs.std(axis=0) > 0, inputs.std(axis=0), 1.0)
        self.library = ((inputs - self.mean) / self.std).reshape(len(pool), -1)

    def members(self, day: int) -> tuple[np.ndarray, np.ndarray]:
        """(K, H, W) mm/day of the analog days of ``day``, and their ids."""
        x = ((self.data.inputs(day).astype(np.float64) - self.mean) / self.std).ravel()
        distance = ((self.library - x) ** 2).sum(axis=1)
        distance[self.pool == day] = np.inf  # a day is never its own analog
        nearest = self.pool[np.argsort(distance, kind="stable")[: self.K]]
        return np.stack([self.data.target_mm(int(i)) for i in nearest]), nearest


class ClimatologyEnsemble:
    """K pool days of the same calendar month (drawn at random, seeded by the seed and the day, so a day's members do
    not depend on which other days are scored, nor in which process), whatever the inputs say."""

    def __init__(self, data: PreparedData, pool: list[int], K: int, seed: int = 0):
        self.data, self.K, self.seed = data, K, int(seed)
        self.pool = np.asarray(pool)
        months = [data.date(int(i)) for i in pool]
        self.months = np.array([int(m[5:7]) if m else 0 for m in months])

    def members(self, day: int) -> tuple[np.ndarray, np.ndarray]:
        date = self.data.date(day)
        candidates = self.pool[self.months == int(date[5:7])] if date else self.pool
        candidates = candidates[candidates != day]
        if candidates.size == 0:
            candidates = self.pool[self.pool != day]
        rng = np.random.default_rng([self.seed, int(day)])
        chosen = rng.choice(candidates, size=self.K, replace=candidates.size < self.K)
        return np.stack([self.data.target_mm(int(i)) for i in chosen]), chosen


class OracleEnsemble:
    """The synthetic benchmark's K redraws of each test day's small-scale part (a floor for any model's CRPS)."""

    def __init__(self, data: PreparedData, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: oracle ensemble not found")
        self.values = np.load(path, mmap_mode="r")
        self.data = data
        self.first_test = min(data.split["test"])
        n_test = len(data.split["test"])
        if self.values.shape[0] != n_test or self.values.shape[2:] != data.hr_shape:
            raise InputError(
                f"{path}: shape {self.values.shape} does not fit {n_test} test days of {data.hr_shape} in {data.root}"
            )
        self.K = int(self.values.shape[1])

    def members(self, day: int) -> tuple[np.ndarray, np.ndarray]:
        if day < self.first_test:
            raise InputError(f"oracle ensemble: day {day} is not a test day")
        members = np.array(self.values[day - self.first_test], dtype=np.float32)
        members[:, ~self.data.valid_mask] = np.nan
        return members, np.arange(self.K)
