"""The one owner of the sample store that `sample` writes and `augment`, the augmented Dataset and the downstream
experiment read.

Layout of a store directory (the reference's naming):

- ``day_XXXXXX_sample_YY.Y_hr_syn.npy`` (1, H, W) float32, normalized like Y_hr, NaN outside the valid mask;
- ``day_XXXXXX_sample_YY.X_lr_ref.npy`` (C, h, w) float32, the real day's normalized inputs;
- ``rejected/`` the same for rejected samples, when asked for;
- ``samples.nc``: CF-1.8 NetCDF, ``pr(realization, time, y, x)`` mm/day of every sample, ``accepted(realization,
  time)``, ``day_id(time)``, ``time`` and, where known, 2-D ``lat``/``lon``;
- ``manifest.json``: what was drawn, how, and every sample's verdict (``day``, ``sample``, ``accepted``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from precip_cvae.errors import InputError
from precip_cvae.fileio import read_json, write_json

if TYPE_CHECKING:
    from precip_cvae.data.dataset import PreparedData

TARGET_SUFFIX = ".Y_hr_syn.npy"
INPUTS_SUFFIX = ".X_lr_ref.npy"
MANIFEST = "manifest.json"
NETCDF = "samples.nc"
REJECTED = "rejected"


def stem(day: int, sample: int) -> str:
    """``day_000123_sample_00``: the file stem of sample ``sample`` of day ``day``."""
    return f"day_{day:06d}_sample_{sample:02d}"


class SampleStore:
    """Read access to a store written by `precip-cvae sample`.

    Parameters
    ----------
    root : the store directory (default of the CLI: ``<outputs_root>/synth``)
    data : the prepared dataset the samples are used with: the manifest must record its metadata's hash (stores
        written before the hash was recorded are taken as they are), and loaded samples must have its shapes
    """

    def __init__(self, root: str | Path, data: PreparedData | None = None):
        self.root = Path(root)
        self.data = data
        self._manifest: dict[str, Any] | None = None

    def exists(self) -> bool:
        return (self.root / MANIFEST).is_file()

    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            manifest = read_json(self.root / MANIFEST)
            recorded = manifest.get("metadata_sha256")
            if self.data is not None and recorded and not self.data.matches_metadata_sha256(recorded):
                raise InputError(
                    f"{self.root}: drawn for another dataset than {self.data.root} (the metadata hash in {MANIFEST} "
                    "differs); draw samples for this dataset with `precip-cvae sample`"
                )
            self._manifest = manifest
        return self._manifest

    def accepted(self) -> dict[int, list[int]]:
        """Day id → indices of its accepted samples (per the manifest; every listed file must exist)."""
        found: dict[int, list[int]] = {}
        records = self.manifest().get("samples")
        if not isinstance(records, list):
            raise InputError(f"{self.root / MANIFEST}: no list of samples")
        for record in records:
            try:
                accepted, day, k = bool(record["accepted"]), record["day"], record["sample"]
            except (KeyError, TypeError):
                raise InputError(f"{self.root / MANIFEST}: a sample record without day, sample and accepted: "
                                 f"{str(record)[:80]}") from None  # fmt: skip
            if not (isinstance(day, int) and isinstance(k, int)) or day < 0 or k < 0:  # file names are built from them
                raise InputError(
                    f"{self.root / MANIFEST}: day and sample must be whole numbers >= 0, got {day!r}, {k!r}"
                )
            if not accepted:
                continue
            for suffix in (TARGET_SUFFIX, INPUTS_SUFFIX):
                path = self.root / f"{stem(day, k)}{suffix}"
                if not path.is_file():
                    raise InputError(f"{path}: listed as accepted in {MANIFEST} but missing")
            found.setdefault(day, []).append(k)
        return found

    def load(self, day: int, sample: int) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs (C, h, w), target (1, H, W))`` float32 normalized, of an accepted sample."""
        base = self.root / stem(day, sample)
        out = []
        for suffix in (INPUTS_SUFFIX, TARGET_SUFFIX):
            path = Path(f"{base}{suffix}")
            try:
                out.append(np.load(path, allow_pickle=False))
            except FileNotFoundError:
                raise InputError(f"{path}: sample file not found") from None
            except (ValueError, OSError, EOFError) as err:
                raise InputError(f"{path}: not a readable .npy array ({err or 'empty file'})") from None
        if self.data is not None:
            expected = ((self.data.n_channels, *self.data.lr_shape), (1, *self.data.hr_shape))
            for suffix, array, shape in zip((INPUTS_SUFFIX, TARGET_SUFFIX), out, expected, strict=True):
                if array.shape != shape:
                    raise InputError(f"{base}{suffix}: shape {array.shape}, expected {shape} (from the dataset)")
        return out[0], out[1]


class SampleWriter:
    """Writes one store into a (staged) directory: per-sample arrays, ``samples.nc`` and ``manifest.json``.

    Use as a context manager; :meth:`add_day` once per day in order, :meth:`finish` with the manifest.

    Parameters
    ----------
    root : the directory to write into (empty)
    K : samples per day
    hr_shape : (H, W)
    attributes : global attributes of samples.nc (source, sampling_mode, temperature, seed, days, ...)
    lat, lon : (H, W) degrees or None
    keep_rejected : also write the arrays of rejected samples, under ``rejected/``
    """

    def __init__(
        self,
        root: Path,
        K: int,
        hr_shape: tuple[int, int],
        attributes: dict[str, Any],
        lat: np.ndarray | None = None,
        lon: np.ndarray | None = None,
        keep_rejected: bool = False,
        dated: bool = True,
    ):
        import netCDF4  # lazily: only writing a store needs it

        self.root, self.K, self.keep_rejected, self.dated = Path(root), int(K), keep_rejected, dated
        if keep_rejected:
            (self.root / REJECTED).mkdir(exist_ok=True)
        H, W = hr_shape
        ds = netCDF4.Dataset(self.root / NETCDF, "w", format="NETCDF4")
        ds.Conventions = "CF-1.8"
        ds.title = "precip-cvae synthetic daily precipitation"
        for key, value in attributes.items():
            setattr(ds, key, value)
        ds.createDimension("realization", self.K)
        ds.createDimension("time", None)
        ds.createDimension("y", H)
        ds.createDimension("x", W)
        real = ds.createVariable("realization", "i4", ("realization",))
        real.long_name = "sample index within a day"
        real[:] = np.arange(self.K)
        if dated:  # a coordinate may not have missing values: days without dates (SRDRN arrays) get none
            time = ds.createVariable("time", "f8", ("time",))
            time.standard_name = "time"
            time.units = "days since 1970-01-01"
            time.calendar = "proleptic_gregorian"
        day = ds.createVariable("day_id", "i4", ("time",))
        day.long_name = "day id of the prepared dataset (file day_XXXXXX)"
        has_grid = lat is not None and lon is not None
        if has_grid:
            for name, values, standard, units in (("lat", lat, "latitude", "degrees_north"),
                                                  ("lon", lon, "longitude", "degrees_east")):  # fmt: skip
                v = ds.createVariable(name, "f8", ("y", "x"))
                v.standard_name = standard
                v.units = units
                v[:] = values
        pr = ds.createVariable(
            "pr", "f4", ("realization", "time", "y", "x"), zlib=True, complevel=1, chunksizes=(1, 1, H, W),
            fill_value=np.float32(np.nan),
        )  # fmt: skip
        pr.standard_name = "lwe_precipitation_rate"
        pr.long_name = "synthetic daily precipitation"
        pr.units = "mm/day"
        pr.cell_methods = "time: mean"
        if has_grid:
            pr.coordinates = "lat lon"
        acc = ds.createVariable("accepted", "i1", ("realization", "time"))
        acc.long_name = f"1 if the sample passed the quality gate (see {MANIFEST} for the reasons)"
        acc.flag_values = np.array([0, 1], dtype=np.int8)
        acc.flag_meanings = "rejected accepted"
        self.nc = ds

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.nc is not None:
            self.nc.close()
            self.nc = None

    def add_day(
        self,
        day: int,
        date: str | None,
        inputs: np.ndarray,
        z: np.ndarray,
        mm: np.ndarray,
        verdicts: list[dict[str, Any]],
    ) -> list[str | None]:
        """Write the K samples of one day.

        Parameters
        ----------
        inputs : (C, h, w) normalized inputs of the real day
        z : (K, H, W) normalized samples (NaN outside the valid mask)
        mm : (K, H, W) the same in mm/day
        verdicts : (K,) the gate's verdict on each sample (``accepted`` and the numbers behind it)

        Returns
        -------
        The file stem of each accepted sample, None for a rejected one.
        """
        if self.dated and not date:
            raise ValueError(f"day {day} has no date, and this store has a time coordinate (dated=True)")
        accepted = [bool(v["accepted"]) for v in verdicts]
        stems: list[str | None] = []
        for k, ok in enumerate(accepted):
            name = stem(day, k)
            folder = self.root if ok else (self.root / REJECTED if self.keep_rejected else None)
            if folder is not None:
                np.save(folder / f"{name}{TARGET_SUFFIX}", z[k][None].astype(np.float32))
                np.save(folder / f"{name}{INPUTS_SUFFIX}", inputs.astype(np.float32))
            stems.append(name if ok else None)
        t = self.nc.dimensions["time"].size
        if self.dated:
            self.nc["time"][t] = (np.datetime64(date, "D") - np.datetime64("1970-01-01", "D")).astype(int)
        self.nc["day_id"][t] = day
        self.nc["pr"][:, t] = np.where(np.isfinite(mm), mm, np.nan)
        self.nc["accepted"][:, t] = [int(ok) for ok in accepted]
        return stems

    def finish(self, manifest: dict[str, Any]) -> None:
        """Close samples.nc and write ``manifest.json`` (last: a store with a manifest is complete)."""
        self.close()
        write_json(self.root / MANIFEST, manifest)
