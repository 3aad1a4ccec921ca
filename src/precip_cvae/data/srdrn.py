"""SRDRN's file layout, in one place: read a directory written by SRDRN's preprocessing, memory-mapped (never all
days at once); the names the synthetic benchmark writes and `augment` exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from precip_cvae.data.normalize import target_to_mm_per_day
from precip_cvae.data.source import DaySource, find_oracle
from precip_cvae.errors import InputError

PREDICTORS_TRAIN = "predictors_train_mean_std_separate.npy"
PREDICTORS_TEST = "predictors_test_mean_std_separate.npy"
OBS_TRAIN = "obs_train_mean_std_single.npy"
OBS_TEST = "obs_test_mean_std_single.npy"
TARGET_MEAN = "ERA5_mean_train.npy"
TARGET_STD = "ERA5_std_train.npy"
LAND_MASK = "land_mask.npy"
ELEVATION = "elevation.npy"
HR_LAT, HR_LON = "high_res_lat.npy", "high_res_lon.npy"
LR_LAT, LR_LON = "low_res_lat.npy", "low_res_lon.npy"
VARIABLES = "variables.npy"
DATES_TRAIN, DATES_TEST = "dates_train.npy", "dates_test.npy"
#: What `augment` writes: the training arrays with synthetic rows appended.
AUGMENTED_PREDICTORS = "predictors_train_augmented.npy"
AUGMENTED_OBS = "obs_train_augmented.npy"


def period_files(period: str) -> tuple[str, str]:
    """(predictors, obs) file names of the ``"train"`` or ``"test"`` period."""
    return {"train": (PREDICTORS_TRAIN, OBS_TRAIN), "test": (PREDICTORS_TEST, OBS_TEST)}[period]


def _load(path: Path, ndim: int | None = None, mmap: bool = True, kinds: str = "biuf") -> np.ndarray:
    """The array of ``path`` (memory-mapped), refused unless its dtype is of one of ``kinds`` (numbers by default)."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable .npy array ({err or 'empty file'})") from None
    if array.dtype.kind not in kinds:
        raise InputError(f"{path}: values of type {array.dtype}, which is not a kind of number")
    if ndim is not None and array.ndim != ndim:
        raise InputError(f"{path}: expected {ndim} dimensions, got shape {array.shape}")
    return array


def _optional(path: Path, shape: tuple[int, ...] | None = None, kinds: str = "biuf") -> np.ndarray | None:
    if not path.is_file():
        return None
    array = np.asarray(_load(path, mmap=False, kinds=kinds))
    if shape is not None and array.shape != shape:
        raise InputError(f"{path}: expected shape {shape}, got {array.shape}")
    return array


def _grid(lat: np.ndarray | None, lon: np.ndarray | None, shape: tuple[int, int], what: str, root: Path):
    """1-D or 2-D lat/lon arrays → (rows, cols) 2-D grids, or (None, None)."""
    if lat is None or lon is None:
        return None, None
    if lat.ndim == 1 and lon.ndim == 1:
        if (lat.size, lon.size) != shape:
            raise InputError(f"{root}/{what}_lat.npy, {what}_lon.npy: sizes {lat.size}, {lon.size} != grid {shape}")
        lon2, lat2 = np.meshgrid(lon.astype(np.float64), lat.astype(np.float64))
        return lat2, lon2
    if lat.shape == shape and lon.shape == shape:
        return lat.astype(np.float64), lon.astype(np.float64)
    raise InputError(f"{root}/{what}_lat.npy: shape {lat.shape} does not match grid {shape}")


def read_srdrn_directory(root: str | Path) -> DaySource:
    """Open an SRDRN directory as a :class:`DaySource`.

    Expected files: ``predictors_{train,test}_mean_std_separate.npy`` (T, h, w, C),
    ``obs_{train,test}_mean_std_single.npy`` (T, H, W) and the per-pixel statistics of the target
    transform ``ERA5_mean_train.npy`` / ``ERA5_std_train.npy`` (H, W), without which values cannot
    be turned into mm/day. Optional: ``land_mask.npy``, ``elevation.npy`` (H, W),
    ``high_res_lat.npy``/``high_res_lon.npy``, ``low_res_lat.npy``/``low_res_lon.npy``,
    ``variables.npy`` (C,), ``dates_train.npy``/``dates_test.npy`` (T,) datetime64.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: input directory not found")
    x_train = _load(root / PREDICTORS_TRAIN, 4)
    x_test = _load(root / PREDICTORS_TEST, 4)
    y_train = _load(root / OBS_TRAIN, 3)
    y_test = _load(root / OBS_TEST, 3)
    n_train, n_test = x_train.shape[0], x_test.shape[0]
    if y_train.shape[0] != n_train:
        raise InputError(f"{root}: {PREDICTORS_TRAIN} has {n_train} days but {OBS_TRAIN} has {y_train.shape[0]}")
    if y_test.shape[0] != n_test:
        raise InputError(f"{root}: {PREDICTORS_TEST} has {n_test} days but {OBS_TEST} has {y_test.shape[0]}")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise InputError(
            f"{root}: {PREDICTORS_TEST} shape {x_test.shape} does not match {PREDICTORS_TRAIN} {x_train.shape}"
        )
    if y_test.shape[1:] != y_train.shape[1:]:
        raise InputError(f"{root}: {OBS_TEST} shape {y_test.shape} does not match {OBS_TRAIN} {y_train.shape}")
    if n_train == 0:
        raise InputError(f"{root}/{PREDICTORS_TRAIN}: no training days")
    _, h, w, n_channels = x_train.shape
    hr_shape = (int(y_train.shape[1]), int(y_train.shape[2]))

    missing = [name for name in (TARGET_MEAN, TARGET_STD) if not (root / name).is_file()]
    if missing:
        raise InputError(
            f"{root}/{missing[0]}: file not found; the per-pixel mean/std of log1p(mm/day) are needed to "
            "turn SRDRN's normalized targets into mm/day"
        )
    mean = _optional(root / TARGET_MEAN, hr_shape).astype(np.float32)
    std = _optional(root / TARGET_STD, hr_shape).astype(np.float32)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std <= 0).any():
        raise InputError(f"{root}/{TARGET_STD}: statistics must be finite with std > 0")

    land = _optional(root / LAND_MASK, hr_shape)
    land_mask = None if land is None else np.asarray(land) > 0.5
    elevation = _optional(root / ELEVATION, hr_shape)
    hr_lat, hr_lon = _grid(_optional(root / HR_LAT), _optional(root / HR_LON), hr_shape, "high_res", root)
    lr_lat, lr_lon = _grid(_optional(root / LR_LAT), _optional(root / LR_LON), (h, w), "low_res", root)
    names = _optional(root / VARIABLES, kinds="US")
    if names is None:
        variables = [f"channel_{c}" for c in range(n_channels)]
    elif names.shape != (n_channels,):
        raise InputError(f"{root}/{VARIABLES}: {names.shape[0] if names.ndim else 0} names for {n_channels} channels")
    else:
        variables = [str(v) for v in names]

    dates = None
    d_train, d_test = (_optional(root / DATES_TRAIN, (n_train,), "MUS"), _optional(root / DATES_TEST, (n_test,), "MUS"))
    if d_train is not None and d_test is not None:
        dates = np.concatenate([d_train, d_test]).astype("datetime64[D]")

    def take(train: str, test: str, start: int, stop: int) -> np.ndarray:
        # A fresh memory map per chunk, closed right after: pages read through a long-lived map stay in
        # the resident set and would make memory grow with the record's length.
        parts = []
        if start < n_train:
            parts.append(np.array(np.load(root / train, mmap_mode="r")[start : min(stop, n_train)]))
        if stop > n_train:
            parts.append(np.array(np.load(root / test, mmap_mode="r")[max(start, n_train) - n_train : stop - n_train]))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def read_predictors(start: int, stop: int) -> np.ndarray:
        chunk = take(PREDICTORS_TRAIN, PREDICTORS_TEST, start, stop).astype(np.float32)
        refuse(~np.isfinite(chunk), start, PREDICTORS_TRAIN, PREDICTORS_TEST, "NaN or Inf in predictors")
        return np.ascontiguousarray(chunk.transpose(0, 3, 1, 2))

    def refuse(bad: np.ndarray, start: int, train: str, test: str, what: str, why: str = "") -> None:
        if bad.any():
            day = start + int(np.argwhere(bad)[0][0])
            name, index = (train, day) if day < n_train else (test, day - n_train)
            raise InputError(f"{root}/{name}: {what} at day index {index}{why}")

    def read_target_normalized(start: int, stop: int) -> np.ndarray:
        z = take(OBS_TRAIN, OBS_TEST, start, stop).astype(np.float32)
        refuse(np.isinf(z), start, OBS_TRAIN, OBS_TEST, "Inf in the target", " (NaN marks a missing value)")
        if land_mask is not None:
            z[:, ~land_mask] = np.nan
        return z

    def read_target_mm(start: int, stop: int) -> np.ndarray:
        return target_to_mm_per_day(read_target_normalized(start, stop), mean, std)

    notes = [f"SRDRN arrays from {root}: {n_train} training-period days, {n_test} test days"]
    if land_mask is None:
        notes.append("no land_mask.npy: every pixel with a finite value counts as valid")
    return DaySource(
        n_days=n_train + n_test,
        is_test=np.r_[np.zeros(n_train, bool), np.ones(n_test, bool)],
        dates=dates,
        variables=variables,
        variable_units=["normalized"] * n_channels,
        read_predictors=read_predictors,
        read_target_mm=read_target_mm,
        read_target_normalized=read_target_normalized,
        hr_shape=hr_shape,
        lr_shape=(int(h), int(w)),
        describe=str(root.resolve()),
        target_stats=(mean, std),
        predictor_stats=(np.zeros(n_channels, np.float32), np.ones(n_channels, np.float32)),
        land_mask=land_mask,
        elevation_m=None if elevation is None else elevation.astype(np.float32),
        hr_lat=hr_lat,
        hr_lon=hr_lon,
        lr_lat=lr_lat,
        lr_lon=lr_lon,
        notes=notes,
        oracle_path=find_oracle(root),
    )
