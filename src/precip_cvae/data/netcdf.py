"""Read NetCDF/Zarr through xarray: predictors on any grids, precipitation in any CF units, matched by day."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

from precip_cvae.data.coarsen import block_mean, derivation
from precip_cvae.data.source import DaySource, find_oracle
from precip_cvae.data.units import precipitation_factor
from precip_cvae.errors import InputError

LAT_NAMES = ("lat", "latitude", "nav_lat", "rlat", "y", "south_north", "lat_rho")
LON_NAMES = ("lon", "longitude", "nav_lon", "rlon", "x", "west_east", "lon_rho")
#: Precipitation below this (mm/day) is refused rather than set to 0.
NEGATIVE_LIMIT_MM = -1.0
PRECIP_NAMES = ("pr", "tp", "rr", "prate", "precip", "precipitation", "prcp", "tprate", "rain", "precipitation_amount")


def open_dataset(path: str | Path) -> xr.Dataset:
    """Open a NetCDF file or a Zarr store, naming the path in any failure."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        if path.is_dir() or path.suffix == ".zarr":
            return xr.open_zarr(path)
        return xr.open_dataset(path)
    except Exception as err:  # the engines raise many types; the user needs the file name and the reason
        reason = str(err).splitlines()[0] if str(err) else ""
        raise InputError(f"{path}: cannot be opened as NetCDF/Zarr ({type(err).__name__}: {reason})") from None


def _is_precip(name: str, da: xr.DataArray) -> bool:
    standard = str(da.attrs.get("standard_name", "")).lower()
    return name.lower() in PRECIP_NAMES or "precipitation" in standard


def _time_dim(da: xr.DataArray) -> str | None:
    for dim in da.dims:
        if dim == "time" or (dim in da.coords and np.issubdtype(da[dim].dtype, np.datetime64)):
            return str(dim)
        if dim in da.coords and da[dim].dtype == object and hasattr(da[dim].values[0], "calendar"):
            return str(dim)
    return None


def _calendar_days(ds_time: xr.DataArray, where: str) -> np.ndarray:
    """Any time stamps (any hour, cftime calendars) → calendar days as datetime64[D]."""
    try:
        text = ds_time.dt.strftime("%Y-%m-%d").values
        days = np.array(text, dtype="datetime64[D]")
    except (TypeError, ValueError, AttributeError) as err:
        raise InputError(f"{where}: time axis cannot be read as dates ({err})") from None
    unique, counts = np.unique(days, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"{where}: day {unique[counts > 1][0]} appears {counts.max()} times; give daily data")
    return days


def _spatial_dims(da: xr.DataArray, time_dim: str | None, where: str) -> tuple[str, str]:
    dims = [str(d) for d in da.dims if d != time_dim]
    if len(dims) != 2:
        raise InputError(f"{where}: expected 2 spatial dimensions besides time, got dims {tuple(da.dims)}")
    ydim = next((d for d in dims if d.lower() in LAT_NAMES), None)
    xdim = next((d for d in dims if d.lower() in LON_NAMES), None)
    if ydim is None or xdim is None or ydim == xdim:
        ydim, xdim = dims  # CF order (..., y, x) when the names say nothing
    return ydim, xdim


def _coordinate(da: xr.DataArray, names: tuple[str, ...], dims: tuple[str, str]) -> np.ndarray | None:
    for name in list(da.coords) + [d for d in dims]:
        if str(name).lower() in names and name in da.coords:
            values = np.asarray(da[name].values, dtype=np.float64)
            if da[name].dims == dims:
                return values
            if da[name].ndim == 1 and da[name].dims[0] in dims:
                return values
    return None


@dataclass
class Grid:
    """A grid's shape and coordinates (1-D regular or 2-D projected, or None), named for messages."""

    where: str
    shape: tuple[int, int]
    lat: np.ndarray | None
    lon: np.ndarray | None

    def coarsened(self, factor: int) -> Grid:
        """The grid after averaging factor×factor blocks (coordinates averaged too)."""
        if factor == 1:
            return self
        shape = (-(-self.shape[0] // factor), -(-self.shape[1] // factor))
        if self.lat is None or self.lon is None:
            return Grid(self.where, shape, None, None)
        if self.lat.ndim == 1:
            return Grid(self.where, shape, _block_mean1d(self.lat, factor), _block_mean1d(self.lon, factor))
        return Grid(self.where, shape, block_mean(self.lat, factor), block_mean(self.lon, factor))

    def same_as(self, other: Grid) -> bool:
        if self.shape != other.shape:
            return False
        if self.lat is None or other.lat is None:
            return True
        return (
            self.lat.shape == other.lat.shape
            and np.allclose(self.lat, other.lat, atol=1e-4)
            and np.allclose(self.lon, other.lon, atol=1e-4)
        )


@dataclass
class Field:
    """One (time, y, x) variable of one file, oriented with latitude ascending.

    ``lat``/``lon`` are 1-D (regular grid) or 2-D (projected grid), or None when the file has none.
    """

    path: Path
    name: str
    data: xr.DataArray  # dims (time, y, x)
    days: np.ndarray
    units: str
    lat: np.ndarray | None
    lon: np.ndarray | None
    factor: float | None = None  # to mm/day, precipitation only
    stats: dict = field(default_factory=lambda: {"min": 0.0})

    @property
    def where(self) -> str:
        return f"{self.path}:{self.name}"

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])

    @property
    def grid(self) -> Grid:
        return Grid(self.where, self.shape, self.lat, self.lon)

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Values at the given time positions: (n, y, x) float32, precipitation in mm/day, small negatives → 0.

        Precipitation below :data:`NEGATIVE_LIMIT_MM` is refused: it is a fill value the file does not declare, or
        a sign error, not the rounding or interpolation noise that is set to 0."""
        if positions.size and np.all(np.diff(positions) == 1):
            chunk = self.data.isel({self.data.dims[0]: slice(int(positions[0]), int(positions[-1]) + 1)})
        else:
            chunk = self.data.isel({self.data.dims[0]: positions})
        try:
            values = np.asarray(chunk.values, dtype=np.float64)
        except (OSError, RuntimeError, ValueError, KeyError) as err:  # a damaged file, a lost Zarr chunk
            first, last = self.days[positions[0]], self.days[positions[-1]]
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"{self.where}: cannot read days {first}..{last} ({message})") from None
        if self.factor is not None:
            values = values * self.factor
            negative = values < 0
            if negative.any():
                low = values < NEGATIVE_LIMIT_MM
                if low.any():
                    at = tuple(np.argwhere(low)[0])
                    raise InputError(
                        f"{self.where}: {values[at]:g} mm/day on {self.days[positions[at[0]]]} at (y, x) = {at[1:]}: "
                        f"precipitation below {NEGATIVE_LIMIT_MM:g} mm/day (an undeclared fill value? declare it "
                        "as _FillValue or missing_value)"
                    )
                self.stats["min"] = min(self.stats["min"], float(values[negative].min()))
                values[negative] = 0.0
        return values.astype(np.float32)

    def first_inf(self, values: np.ndarray, positions: np.ndarray) -> None:
        """Refuse Inf in ``values`` (read at ``positions``): NaN marks a missing value, Inf is no amount."""
        inf = np.isinf(values)
        if inf.any():
            at = tuple(np.argwhere(inf)[0])
            raise InputError(f"{self.where}: Inf on {self.days[positions[at[0]]]} at (y, x) = {at[1:]} (NaN marks a "
                             "missing value; Inf is not an amount)")  # fmt: skip


def _ascending(da: xr.DataArray, ydim: str, xdim: str) -> tuple[xr.DataArray, np.ndarray | None, np.ndarray | None]:
    """The array with 1-D latitude and longitude ascending (flipped if they run the other way), and those axes."""
    lat = _coordinate(da, LAT_NAMES, (ydim, xdim))
    lon = _coordinate(da, LON_NAMES, (ydim, xdim))
    if lat is not None and lat.ndim == 1 and lat.size > 1 and lat[0] > lat[-1]:
        da, lat = da.isel({ydim: slice(None, None, -1)}), lat[::-1]
    if lon is not None and lon.ndim == 1 and lon.size > 1 and lon[0] > lon[-1]:
        da, lon = da.isel({xdim: slice(None, None, -1)}), lon[::-1]
    return da, lat, lon


def load_field(path: Path, ds: xr.Dataset, name: str, precip_units: str | None = None) -> Field:
    """Wrap variable ``name`` of ``ds`` as a :class:`Field` (time first, latitude ascending)."""
    da = ds[name]
    where = f"{path}:{name}"
    tdim = _time_dim(da)
    if tdim is None:
        raise InputError(f"{where}: no time dimension (dims {tuple(da.dims)})")
    ydim, xdim = _spatial_dims(da, tdim, where)
    da = da.transpose(tdim, ydim, xdim)
    da, lat, lon = _ascending(da, ydim, xdim)
    if da.dtype.kind not in "biuf":
        raise InputError(f"{where}: values of type {da.dtype}, which is not a kind of number")
    units = str(da.attrs.get("units", ""))
    factor = None
    if _is_precip(name, da):
        factor = precipitation_factor(precip_units or da.attrs.get("units"), where)
    return Field(path, name, da, _calendar_days(da[tdim], where), units, lat, lon, factor)


def data_variables(ds: xr.Dataset) -> list[str]:
    """Names of the variables with a time axis and two spatial dimensions."""
    names = []
    for name, da in ds.data_vars.items():
        if da.ndim == 3 and _time_dim(da) is not None:
            names.append(str(name))
    return names


class Regridder:
    """Bilinear interpolation between regular lat/lon grids; nearest neighbour outside the source grid."""

    def __init__(self, source: Grid, target: Grid):
        if source.lat is None or target.lat is None or source.lat.ndim != 1 or target.lat.ndim != 1:
            raise InputError(
                f"{source.where}: on a grid {source.shape} different from {target.where} {target.shape}, "
                "and only regular 1-D lat/lon grids can be regridded here; regrid it first (e.g. with xESMF)"
            )
        self.source_axes = (source.lat, source.lon)
        lat2, lon2 = np.meshgrid(target.lat, target.lon, indexing="ij")
        self.points = np.stack([lat2.ravel(), lon2.ravel()], axis=-1)
        self.shape = target.shape
        inside = (
            (lat2 >= source.lat.min())
            & (lat2 <= source.lat.max())
            & (lon2 >= source.lon.min())
            & (lon2 <= source.lon.max())
        )
        self.outside = ~inside.ravel()
        self.description = (
            f"{source.where}: bilinear from {source.shape[0]}x{source.shape[1]} to {target.shape[0]}x{target.shape[1]}"
            + (f", nearest neighbour at {int(self.outside.sum())} cells outside its grid" if self.outside.any() else "")
        )

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """(n, y, x) on the source grid → (n, Y, X) on the target grid."""
        stacked = np.moveaxis(values, 0, -1)
        out = RegularGridInterpolator(self.source_axes, stacked, method="linear", bounds_error=False)(self.points)
        if self.outside.any():
            near = RegularGridInterpolator(
                self.source_axes, stacked, method="nearest", bounds_error=False, fill_value=None
            )
            out[self.outside] = near(self.points[self.outside])
        return np.moveaxis(out.reshape(*self.shape, -1), -1, 0).astype(np.float32)


def _parse_period(text: str, option: str) -> tuple[np.datetime64, np.datetime64]:
    match = re.fullmatch(r"\s*(\d{4}-\d{2}-\d{2})\s*:\s*(\d{4}-\d{2}-\d{2})\s*", text or "")
    if not match:
        raise InputError(f"{option}: expected YYYY-MM-DD:YYYY-MM-DD, got {text!r}")
    start, end = (np.datetime64(match.group(1), "D"), np.datetime64(match.group(2), "D"))
    if end < start:
        raise InputError(f"{option}: the period {text!r} ends before it starts")
    return start, end


def _statics(paths: list[Path], target: Field) -> tuple[dict[str, np.ndarray], list[str]]:
    """Land mask, valid mask and elevation from static files on the high-resolution grid."""
    found: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for path in paths:
        ds = open_dataset(path)
        for name, da in ds.data_vars.items():
            da = da.squeeze(drop=True)
            where = f"{path}:{name}"
            if da.ndim != 2:
                continue
            ydim, xdim = _spatial_dims(da, None, where)
            da = da.transpose(ydim, xdim)
            da, lat, lon = _ascending(da, ydim, xdim)
            if tuple(da.shape) != target.shape:
                raise InputError(
                    f"{where}: shape {tuple(da.shape)} differs from the high-resolution grid {target.shape}"
                )
            if lat is not None and target.lat is not None and lat.shape == target.lat.shape:
                if not (np.allclose(lat, target.lat, atol=1e-3) and np.allclose(lon, target.lon, atol=1e-3)):
                    raise InputError(f"{where}: coordinates differ from those of {target.where}")
            values = np.asarray(da.values, dtype=np.float64)
            key = str(name).lower()
            if "valid" in key:
                found["valid"] = values > 0.5
            elif re.search(r"land|lsm|sftlf|mask", key):
                found["land"] = values > (50.0 if np.nanmax(values) > 1.5 else 0.5)
            elif re.search(r"elev|orog|dem|topo|hgt|height|altitude", key):
                found["elevation"] = np.nan_to_num(values).astype(np.float32)
            else:
                notes.append(f"{where}: not recognized as land mask, valid mask or elevation; ignored")
    return found, notes


def read_netcdf(
    lowres: list[str | Path],
    highres: str | Path,
    train_period: str,
    test_period: str,
    statics: list[str | Path] | None = None,
    pr_var: str | None = None,
    pr_units: str | None = None,
    coarsen: int = 1,
) -> DaySource:
    """Open NetCDF/Zarr inputs as a :class:`DaySource`.

    Parameters
    ----------
    lowres : files whose (time, y, x) variables are the predictor channels, in order. Variables on
        other grids than the first are interpolated onto it. Precipitation variables are converted
        to mm/day from their CF units and clipped at 0.
    highres : the high-resolution precipitation file; NaN marks a missing observation.
    train_period, test_period : "YYYY-MM-DD:YYYY-MM-DD", inclusive, matched by calendar day.
    statics : files with land mask / valid mask / elevation on the high-resolution grid.
    pr_var : the precipitation variable of ``highres`` when the file has several.
    pr_units : override of the target's units attribute.
    coarsen : block-average the predictors over coarsen×coarsen cells first (e.g. to build a coarse
        input from a high-resolution precipitation file).
    """
    if not lowres:
        raise InputError("--lowres: give at least one low-resolution file")
    if coarsen < 1:
        raise InputError(f"--coarsen: must be >= 1, got {coarsen}")
    train_start, train_end = _parse_period(train_period, "--train-period")
    test_start, test_end = _parse_period(test_period, "--test-period")
    if test_start <= train_end and train_start <= test_end:
        raise InputError(f"--train-period {train_period} and --test-period {test_period} overlap")
    notes: list[str] = []

    highres = Path(highres)
    hds = open_dataset(highres)
    candidates = data_variables(hds)
    if pr_var is not None:
        if pr_var not in hds.data_vars:
            raise InputError(f"{highres}: no variable {pr_var!r} (has {', '.join(map(str, hds.data_vars))})")
        name = pr_var
    elif len(candidates) == 1:
        name = candidates[0]
    else:
        precip = [n for n in candidates if _is_precip(n, hds[n])]
        if len(precip) != 1:
            raise InputError(f"{highres}: cannot tell which of {candidates} is precipitation; pass --pr-var NAME")
        name = precip[0]
    target = load_field(highres, hds, name, precip_units=pr_units)
    if target.factor is None:
        target.factor = precipitation_factor(pr_units or target.data.attrs.get("units"), target.where)
    if target.factor != 1.0:
        notes.append(f"{target.where}: units {target.units!r} converted to mm/day (x{target.factor:g})")

    fields: list[Field] = []
    for path in map(Path, lowres):
        ds = open_dataset(path)
        names = data_variables(ds)
        if not names:
            raise InputError(f"{path}: no variable with dimensions (time, y, x)")
        for var in names:
            f = load_field(path, ds, var)
            if f.factor is not None and f.factor != 1.0:
                notes.append(f"{f.where}: units {f.units!r} converted to mm/day (x{f.factor:g})")
            fields.append(f)
    grids = [f.grid.coarsened(coarsen) for f in fields]
    if coarsen > 1:
        notes.append(f"predictors block-averaged over {coarsen}x{coarsen} cells (NaN-aware, edge blocks partial)")

    # Days present in every file and inside one of the two periods.
    common = target.days
    for f in fields:
        common = np.intersect1d(common, f.days)
    in_train = (common >= train_start) & (common <= train_end)
    in_test = (common >= test_start) & (common <= test_end)
    days = common[in_train | in_test]
    for label, start, end, mask in (
        ("train", train_start, train_end, in_train),
        ("test", test_start, test_end, in_test),
    ):
        if not mask.any():
            raise InputError(
                f"--{label}-period {start}:{end}: no day of it is present in every input "
                f"(high-res covers {target.days.min()}..{target.days.max()})"
            )
        expected = int((target.days >= start).sum() - (target.days > end).sum())
        if int(mask.sum()) < expected:
            notes.append(
                f"{label} period: {expected - int(mask.sum())} high-res days missing in some predictor file, dropped"
            )
    is_test = (days >= test_start) & (days <= test_end)
    order = np.argsort(days, kind="stable")
    days, is_test = days[order], is_test[order]

    positions = [_lookup(f.days, days) for f in fields]
    target_positions = _lookup(target.days, days)

    # Reference grid: the first predictor's (after coarsening); the others are interpolated onto it.
    ref = grids[0]
    regridders: list[Regridder | None] = []
    for grid in grids:
        if grid.same_as(ref):
            regridders.append(None)
        else:
            regridders.append(Regridder(grid, ref))
            notes.append(regridders[-1].description)

    def read_predictors(start: int, stop: int) -> np.ndarray:
        channels = []
        for f, pos, regrid in zip(fields, positions, regridders, strict=True):
            values = f.read(pos[start:stop])
            if coarsen > 1:
                values = block_mean(values, coarsen).astype(np.float32)
            if regrid is not None:
                values = regrid(values)
            bad = ~np.isfinite(values)
            if bad.any():
                day = days[start + int(np.argwhere(bad)[0][0])]
                raise InputError(f"{f.where}: NaN or Inf in predictors on {day}")
            channels.append(values)
        return np.stack(channels, axis=1)

    def read_target_mm(start: int, stop: int) -> np.ndarray:
        values = target.read(target_positions[start:stop])
        target.first_inf(values, target_positions[start:stop])
        return values

    found, static_notes = _statics([Path(p) for p in statics or []], target)
    notes.extend(static_notes)
    if "land" in found and "valid" in found and (found["valid"] & ~found["land"]).any():
        # Observed cells are land for the observing network (e.g. coastal E-OBS cells a coarse land mask misses).
        extra = int((found["valid"] & ~found["land"]).sum())
        found["land"] = found["land"] | found["valid"]
        notes.append(f"{extra} cells with observations that the land mask calls sea are counted as land")
    # Channels that are the target itself, block-averaged (same file and variable, same units, no regridding): the
    # downstream experiment can then make a synthetic day's X from its synthetic target by the same operator.
    derived = [
        derivation(coarsen)
        if f.path.resolve() == highres.resolve() and f.name == name and regrid is None
        and f.factor is not None and np.isclose(f.factor, target.factor)
        else None
        for f, regrid in zip(fields, regridders, strict=True)
    ]  # fmt: skip
    hr_lat, hr_lon = _grid2d(target.lat, target.lon)
    lr_lat, lr_lon = _grid2d(ref.lat, ref.lon)
    source = DaySource(
        n_days=int(days.size),
        is_test=is_test,
        dates=days,
        variables=[f.name for f in fields],
        variable_units=["mm/day" if f.factor is not None else f.units for f in fields],
        read_predictors=read_predictors,
        read_target_mm=read_target_mm,
        hr_shape=target.shape,
        lr_shape=ref.shape,
        describe=f"{highres} and {len(lowres)} predictor file(s)",
        land_mask=found.get("land"),
        elevation_m=found.get("elevation"),
        valid_hint=found.get("valid"),
        hr_lat=hr_lat,
        hr_lon=hr_lon,
        lr_lat=lr_lat,
        lr_lon=lr_lon,
        notes=notes,
        oracle_path=find_oracle(Path(highres).parent),
        derived=derived,
    )
    source.clip_report = lambda: [  # type: ignore[attr-defined]
        f"{f.where}: negative values (down to {f.stats['min']:.3g} mm/day) set to 0"
        for f in [target, *fields]
        if f.stats["min"] < 0
    ]
    return source


def _lookup(available: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    index = {d: i for i, d in enumerate(available.tolist())}
    return np.array([index[d] for d in wanted.tolist()], dtype=np.int64)


def _block_mean1d(axis: np.ndarray, factor: int) -> np.ndarray:
    pad = -axis.size % factor
    padded = np.pad(axis.astype(np.float64), (0, pad), constant_values=np.nan)
    return np.nanmean(padded.reshape(-1, factor), axis=1)


def _grid2d(lat: np.ndarray | None, lon: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    if lat is None or lon is None:
        return None, None
    if lat.ndim == 1:
        lon2, lat2 = np.meshgrid(lon, lat)
        return lat2, lon2
    return lat, lon
