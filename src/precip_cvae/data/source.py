"""What `prepare` reads: a day-indexed source of predictors and precipitation, whatever the file format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Where the synthetic benchmark keeps its oracle ensemble, relative to the benchmark's directory.
ORACLE_FILE = Path("oracle") / "oracle_test.npy"


def find_oracle(folder: str | Path) -> str | None:
    """The absolute path of the oracle ensemble of the benchmark written in ``folder``, if there is one."""
    path = Path(folder) / ORACLE_FILE
    return str(path.resolve()) if path.is_file() else None


@dataclass
class DaySource:
    """Days in time order, the training period first, then the test period.

    Readers (:mod:`precip_cvae.data.srdrn`, :mod:`precip_cvae.data.netcdf`) fill this in; arrays are
    read lazily, a chunk of days at a time, through the two callables.

    Attributes
    ----------
    n_days : number of days (training period + test period)
    is_test : (n_days,) bool, True for days of the test period
    dates : (n_days,) datetime64[D] or None when the source has no calendar
    variables, variable_units : names and units of the C predictor channels
    read_predictors : (start, stop) -> (n, C, h, w) float32
        Physical units, or already normalized when ``predictor_stats`` is given.
    read_target_mm : (start, stop) -> (n, H, W) float32 mm/day, NaN where there is no observation
    read_target_normalized : (start, stop) -> (n, H, W) float32, or None
        The source's own normalized target (SRDRN), copied as is rather than re-derived.
    target_stats : (mean, std) (H, W) of log1p(mm/day), or None to compute them over training days
    predictor_stats : (mean, std) (C,), or None to compute them over training days
    land_mask : (H, W) bool or None; elevation_m : (H, W) or None; valid_hint : (H, W) bool or None
    hr_lat, hr_lon : (H, W) float64 degrees or None; lr_lat, lr_lon : (h, w) or None
    notes : lines for the summary (regridding, unit conversions, clipping)
    oracle_path : the synthetic benchmark's oracle ensemble of the test days (absolute), or None
    derived : per channel, how it is computed from the target in mm/day (:func:`precip_cvae.data.coarsen.derivation`)
        when it is the target block-averaged, else None; None for the whole list when unknown
    describe : the input files or directory, for error messages and metadata
    """

    n_days: int
    is_test: np.ndarray
    dates: np.ndarray | None
    variables: list[str]
    variable_units: list[str]
    read_predictors: Callable[[int, int], np.ndarray]
    read_target_mm: Callable[[int, int], np.ndarray]
    hr_shape: tuple[int, int]
    lr_shape: tuple[int, int]
    describe: str
    read_target_normalized: Callable[[int, int], np.ndarray] | None = None
    target_stats: tuple[np.ndarray, np.ndarray] | None = None
    predictor_stats: tuple[np.ndarray, np.ndarray] | None = None
    land_mask: np.ndarray | None = None
    elevation_m: np.ndarray | None = None
    valid_hint: np.ndarray | None = None
    hr_lat: np.ndarray | None = None
    hr_lon: np.ndarray | None = None
    lr_lat: np.ndarray | None = None
    lr_lon: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    oracle_path: str | None = None
    derived: list[dict | None] | None = None
