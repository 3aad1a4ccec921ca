"""Read a prepared dataset (`prepare`'s output) for training and sampling."""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from precip_cvae.data.normalize import Normalization
from precip_cvae.data.source import find_oracle
from precip_cvae.errors import InputError
from precip_cvae.fileio import content_sha256, read_json

#: Files of ``metadata/`` that report on the `prepare` run rather than define the data: where the input files were
#: and the dataset was written (paths), the run's options and counts the other files determine. Outside
#: :attr:`PreparedData.metadata_sha256`.
REPORT_FILES = ("summary.json", "summary.txt")

#: Static maps given to the model, in this order, and how each is scaled to order one.
STATIC_SCALES = {"land_sea_mask": 1.0, "valid_mask": 1.0, "dist_to_coast_km": 100.0, "elevation": 1000.0}


def _load(path: Path) -> np.ndarray:
    """The array in a .npy file, read in one call. Its header is parsed once for the thousands of day files that share
    it (:func:`_npy_header`): ``np.load``, which parses it again each time, took 76-195 µs a demo-size day file
    and this 20-30 µs. Anything unusual (Fortran order, objects, a size that does not match) goes through
    ``np.load`` and its errors."""
    try:
        with open(path, "rb", buffering=0) as fh:
            data = bytearray(os.fstat(fh.fileno()).st_size)  # writable, as np.load's arrays are
            got = fh.readinto(data)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (is this a dataset written by `precip-cvae prepare`?)") from None
    except OSError as err:
        raise InputError(f"{path}: not a readable .npy array ({err})") from None
    try:
        length = _header_length(data)
        shape, fortran_order, dtype = _npy_header(bytes(data[:length]))
        count = int(np.prod(shape))
        if got == len(data) == length + count * dtype.itemsize and not fortran_order and not dtype.hasobject:
            return np.frombuffer(data, dtype, count, offset=length).reshape(shape)
    except (ValueError, OSError, EOFError):
        pass  # np.load below says what is wrong
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable .npy array ({err or 'empty file'})") from None


def _header_length(head: bytes | bytearray) -> int:
    """Bytes of a .npy file's header (magic, version, length field and the header itself)."""
    if head[:6] != b"\x93NUMPY" or len(head) < 12:
        raise ValueError("not a .npy file")
    if head[6:7] == b"\x01":
        return 10 + int.from_bytes(head[8:10], "little")
    return 12 + int.from_bytes(head[8:12], "little")


@functools.lru_cache(maxsize=64)
def _npy_header(head: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of a .npy header: parsed once for the thousands of day files that share it."""
    fh = io.BytesIO(head)
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(fh)
    return tuple(shape), bool(fortran_order), dtype


def npy_shape(path: Path) -> tuple[int, ...]:
    """The shape in a .npy file's header, after checking that the file holds that many bytes (a cheap check of a
    whole dataset: the data itself is not read)."""
    try:
        fd = os.open(path, os.O_RDONLY)  # not open(): this runs for every day file, and os calls are 2 x faster
        try:
            head, size = os.read(fd, 4096), os.fstat(fd).st_size
        finally:
            os.close(fd)
        length = _header_length(head)
        shape, _, dtype = _npy_header(head[:length])
        expected = length + int(np.prod(shape)) * dtype.itemsize
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (is this a dataset written by `precip-cvae prepare`?)") from None
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable .npy array ({err or 'empty file'})") from None
    if size != expected:
        raise InputError(f"{path}: not a readable .npy array ({size} bytes, its header promises {expected})")
    if dtype.kind != "f":
        raise InputError(f"{path}: values of type {dtype}, expected floating point")
    return tuple(shape)


class PreparedData:
    """Metadata, normalization and static maps of a prepared dataset, loaded once.

    Attributes
    ----------
    root : the ``data`` directory
    hr_shape (H, W), lr_shape (h, w), n_channels C
    split : {"train": [ids], "val": [...], "test": [...]}; categories : {"000123": "heavy", ...}
    thresholds_mm : {"P95": ..., ...} mm/day; heavy_land_mean : mm/day
    normalization : the target transform (:class:`~precip_cvae.data.normalize.Normalization`)
    valid_mask : (H, W) bool; land_mask : (H, W) bool, valid land pixels
    statics : (S, H, W) float32, the maps of :data:`STATIC_SCALES` that exist, scaled
    static_names : their names
    mean_land_mm_per_day : mean of the training period's daily land means (the mass loss's scale)
    variables : [{"name", "units", "mean", "std"}, ...] of the C predictor channels; a channel `prepare --coarsen` made
        from the target itself also has "derived_from_target" (see :mod:`precip_cvae.data.coarsen`)
    hr_lat, hr_lon : (H, W) degrees or None; lr_lat, lr_lon : (h, w) degrees or None
    oracle_path : the synthetic benchmark's oracle ensemble this dataset was prepared from, or None
    """

    def __init__(self, root: str | Path):
        root = Path(root)
        if not (root / "metadata").is_dir():
            raise InputError(f"{root}: no prepared dataset here (expected {root}/metadata; run `precip-cvae prepare`)")
        self.root = root
        meta = root / "metadata"
        shape = read_json(meta / "H_W.json")
        self.hr_shape = (int(shape["H"]), int(shape["W"]))
        self.lr_shape = (int(shape["h"]), int(shape["w"]))
        self.n_channels = int(shape["C"])
        self.split = {k: [int(i) for i in v] for k, v in read_json(meta / "split.json").items()}
        self.categories = read_json(meta / "categories.json")
        thresholds = read_json(meta / "thresholds.json")
        self.thresholds_mm = {
            k: float(thresholds[k]) for k in ("P50", "P90", "P95", "P99", "P99.9", "max") if k in thresholds
        }
        self.heavy_land_mean = float(thresholds["categories"]["heavy_land_mean_mm_per_day"])
        self.normalization = Normalization.load(meta)
        self.dates = read_json(meta / "dates.json")
        statics = root / "statics"
        maps, names = [], []
        for name, scale in STATIC_SCALES.items():
            path = statics / f"{name}.npy"
            if path.is_file() or name in ("land_sea_mask", "valid_mask"):
                maps.append(np.nan_to_num(_load(path).astype(np.float32)) / scale)
                names.append(name)
        if self.normalization.mean.shape != self.hr_shape:
            raise InputError(
                f"{meta}: target_log1p_mean has shape {self.normalization.mean.shape}, H_W.json says {self.hr_shape}"
            )
        for name, array in zip(names, maps, strict=True):
            if array.shape != self.hr_shape:
                raise InputError(f"{statics}/{name}.npy: shape {array.shape}, H_W.json says {self.hr_shape}")
        self.valid_mask = maps[names.index("valid_mask")] > 0.5
        self.land_mask = (maps[names.index("land_sea_mask")] > 0.5) & self.valid_mask
        self.statics = np.stack(maps).astype(np.float32)
        self.static_names = names
        self.land_means = _load(meta / "land_mean_mm_per_day.npy")
        self.land_wet_fraction = _load(meta / "land_wet_fraction.npy")
        period = np.array(self.split["train"] + self.split["val"], dtype=np.int64)
        self.mean_land_mm_per_day = float(max(np.nanmean(self.land_means[period]), 1e-3))
        self.variables = read_json(meta / "variables.json")["variables"]
        self.hr_lat, self.hr_lon, self.lr_lat, self.lr_lon = (
            _load(statics / f"{name}.npy") if (statics / f"{name}.npy").is_file() else None
            for name in ("lat", "lon", "lr_lat", "lr_lon")
        )
        summary = read_json(meta / "summary.json")
        # datasets prepared before the oracle had a field of its own: the SRDRN directory they came from
        oracle = (
            summary["oracle"]
            if "oracle" in summary
            else find_oracle(summary["input"])
            if summary.get("input")
            else None
        )
        self.oracle_path = Path(oracle) if oracle else None

    @functools.cached_property
    def metadata_sha256(self) -> str:
        """The content hash of ``metadata/`` but `prepare`'s report (:data:`REPORT_FILES`): what a sample store, an
        experiment's run or a metrics file records of the dataset it was made from, and what a store is checked
        against. The same input files prepared into another folder, or read from another copy, hash alike."""
        return content_sha256(self.root / "metadata", exclude=REPORT_FILES)

    @functools.cached_property
    def _whole_metadata_sha256(self) -> str:
        """The hash of the whole ``metadata/`` folder, report included: what stores and runs recorded before the
        report was left out (hashed once, however many records it is compared with)."""
        return content_sha256(self.root / "metadata")

    def matches_metadata_sha256(self, recorded: str) -> bool:
        """Whether a recorded metadata hash names this dataset: :attr:`metadata_sha256`, or the whole folder's
        (:attr:`_whole_metadata_sha256`)."""
        # the whole folder is hashed only when the record is not this dataset's current hash
        return recorded == self.metadata_sha256 or recorded == self._whole_metadata_sha256

    def check_days(self, ids: list[int]) -> None:
        """Refuse a dataset edited by hand before any work starts: every day of ``ids`` must have its two files,
        complete and of the shapes of H_W.json (only the headers are read)."""
        expected = {"X_lr": (self.n_channels, *self.lr_shape), "Y_hr": (1, *self.hr_shape)}
        for folder, shape in expected.items():
            present = set(os.listdir(self.root / folder)) if (self.root / folder).is_dir() else set()
            for index in ids:
                path = self.root / folder / f"day_{index:06d}.npy"
                if path.name not in present:
                    raise InputError(f"{path}: file not found (the dataset lists day {index} in split.json)")
                found = npy_shape(path)
                if found != shape:
                    raise InputError(f"{path}: shape {found}, expected {shape} (from H_W.json)")

    def threshold_z(self, threshold: str | float) -> np.ndarray:
        """Per-pixel normalized equivalent of a threshold: a key of thresholds.json ("P95") or mm/day."""
        if isinstance(threshold, str):
            if threshold not in self.thresholds_mm:
                raise InputError(
                    f"loss.extreme_threshold: {threshold!r} is not in thresholds.json "
                    f"(has {', '.join(self.thresholds_mm)}); or give a number in mm/day"
                )
            mm = self.thresholds_mm[threshold]
        else:
            mm = float(threshold)
        return self.normalization.threshold_z(mm)

    def ids(self, split: str) -> list[int]:
        if split not in self.split:
            raise InputError(f"split {split!r}: not one of {', '.join(self.split)}")
        return self.split[split]

    @functools.cached_property
    def training_range(self) -> tuple[np.ndarray, np.ndarray]:
        """(C,) smallest and largest normalized value of each predictor channel over the training days."""
        lo = np.full(self.n_channels, np.inf)
        hi = np.full(self.n_channels, -np.inf)
        for day in self.ids("train"):
            x = self.inputs(day)
            lo = np.fmin(lo, np.nanmin(x, axis=(1, 2)))
            hi = np.fmax(hi, np.nanmax(x, axis=(1, 2)))
        return lo, hi

    def beyond_training_range(self, days: list[int]) -> list[dict]:
        """The days of ``days`` with a predictor outside :attr:`training_range`, furthest first: where a model trained
        on the training days extrapolates. Each: ``day``, ``date``, ``heavy``, ``channel`` (the name), ``excess_sd``
        (the largest distance beyond the range over channels and pixels, in channel standard deviations: the inputs
        are standardized), ``value_sd`` and ``training_bound_sd`` (that channel's extreme value and the bound it
        passes)."""
        lo, hi = self.training_range
        names = [v["name"] for v in self.variables]
        found = []
        for day in days:
            x = self.inputs(day)
            top, bottom = np.nanmax(x, axis=(1, 2)), np.nanmin(x, axis=(1, 2))
            excess = np.fmax(top - hi, lo - bottom)
            if not np.isfinite(excess).any():
                continue
            c = int(np.nanargmax(excess))
            if excess[c] > 0:
                upper = top[c] - hi[c] >= lo[c] - bottom[c]
                found.append({"day": int(day), "date": self.date(day), "heavy": bool(self.is_heavy(day)),
                              "channel": names[c], "excess_sd": float(excess[c]),
                              "value_sd": float(top[c] if upper else bottom[c]),
                              "training_bound_sd": float(hi[c] if upper else lo[c])})  # fmt: skip
        return sorted(found, key=lambda f: -f["excess_sd"])

    def is_heavy(self, index: int) -> bool:
        return self.categories.get(f"{index:06d}") == "heavy"

    def inputs(self, index: int) -> np.ndarray:
        """(C, h, w) float32 normalized predictors of day ``index``."""
        return _load(self.root / "X_lr" / f"day_{index:06d}.npy")

    def target(self, index: int) -> np.ndarray:
        """(1, H, W) float32 normalized target of day ``index`` (NaN where there is no observation)."""
        return _load(self.root / "Y_hr" / f"day_{index:06d}.npy")

    def target_mm(self, index: int) -> np.ndarray:
        """(H, W) float32 mm/day of day ``index``, NaN outside the valid mask or where missing."""
        mm = self.normalization.to_mm(self.target(index)[0])
        return np.where(self.valid_mask, mm, np.nan).astype(np.float32)

    def date(self, index: int) -> str | None:
        return self.dates.get(f"{index:06d}")


class DayDataset(Dataset):
    """One item per day: the model's inputs, its target with NaN zero-filled, and the mask of real values.

    Each item is a dict: ``inputs`` (C, h, w), ``target`` (1, H, W) normalized with 0 where missing,
    ``mask`` (1, H, W) bool valid pixels with an observation, ``land`` (1, H, W) bool, ``index`` (day id)
    and ``heavy`` (bool).
    """

    def __init__(self, data: PreparedData, ids: list[int]):
        self.data = data
        self.ids = list(ids)
        self._valid = torch.from_numpy(data.valid_mask)[None]
        self._land = torch.from_numpy(data.land_mask)[None]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: int) -> dict:
        index = self.ids[item]
        inputs = self.data.inputs(index)
        target = self.data.target(index)
        if inputs.shape != (self.data.n_channels, *self.data.lr_shape):
            raise InputError(
                f"{self.data.root}/X_lr/day_{index:06d}.npy: shape {inputs.shape}, expected "
                f"{(self.data.n_channels, *self.data.lr_shape)}"
            )
        if target.shape != (1, *self.data.hr_shape):
            raise InputError(
                f"{self.data.root}/Y_hr/day_{index:06d}.npy: shape {target.shape}, expected {(1, *self.data.hr_shape)}"
            )
        target = torch.from_numpy(np.ascontiguousarray(target))
        observed = torch.isfinite(target)
        mask = observed & self._valid
        return {
            "inputs": torch.from_numpy(np.ascontiguousarray(inputs)),
            "target": torch.where(mask, target, torch.zeros_like(target)),
            "mask": mask,
            "land": mask & self._land,
            "index": index,
            "heavy": self.data.is_heavy(index),
        }

    def heavy_flags(self) -> np.ndarray:
        return np.array([self.data.is_heavy(i) for i in self.ids], dtype=bool)
