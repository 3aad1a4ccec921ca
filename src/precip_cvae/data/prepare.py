"""Turn a :class:`DaySource` into the prepared per-day dataset of the reference layout.

Two passes over the days, a chunk at a time (memory does not grow with the record's length):
1. statistics of the training period — per-pixel log1p mean/std, predictor mean/std, daily land
   means, a histogram for exact percentiles — and which pixels ever have data;
2. writing ``X_lr/day_XXXXXX.npy`` and ``Y_hr/day_XXXXXX.npy`` while keeping the few values the
   percentiles need.
Everything is built in a temporary directory renamed to ``<output_dir>/data`` at the end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from precip_cvae.data.geo import distance_to_coast_km
from precip_cvae.data.normalize import PREDICTOR_STD_FLOOR, Normalization, finalize_target_stats
from precip_cvae.data.quantiles import StreamingPercentiles
from precip_cvae.data.source import DaySource
from precip_cvae.errors import InputError
from precip_cvae.fileio import save_npy, staged_directory, write_json, write_text

#: Percentiles of the valid pixel values of training-period days written to thresholds.json (key → p).
PERCENTILES = {"P50": 50.0, "P90": 90.0, "P95": 95.0, "P99": 99.0, "P99.9": 99.9, "max": 100.0}
#: Those whose per-pixel normalized equivalent is saved as an array.
NORMALIZED_THRESHOLDS = ("P95", "P99", "P99.9")
WET_MM_PER_DAY = 0.1


@dataclass(frozen=True)
class PrepareOptions:
    """How the prepared dataset is split and categorized.

    Attributes
    ----------
    val_fraction : share of the training period held out for validation
    split : "time" (validation = last days of the training period; daily weather is autocorrelated,
        a random split leaks) or "random"
    seed : for the random split
    heavy_quantile : a day is heavy when its land mean >= this quantile of training-period land means
    dry_mm_per_day : a day is dry when its land mean < this (mm/day)
    chunk_days : days read at once
    spacing_km : cell size assumed for distances when the grid has no coordinates
    """

    val_fraction: float = 0.2
    split: str = "time"
    seed: int = 0
    heavy_quantile: float = 0.95
    dry_mm_per_day: float = 1.0
    chunk_days: int = 64
    spacing_km: float = 4.0
    progress: bool = True
    overwrite: bool = False

    def validate(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"--val-fraction: must be in [0, 1), got {self.val_fraction}")
        if self.split not in ("time", "random"):
            raise InputError(f"--split: must be 'time' or 'random', got {self.split!r}")
        if not 0.0 < self.heavy_quantile < 1.0:
            raise InputError(f"--heavy-quantile: must be in (0, 1), got {self.heavy_quantile}")
        if self.dry_mm_per_day < 0:
            raise InputError(f"--dry-mm-per-day: must be >= 0, got {self.dry_mm_per_day}")
        if self.chunk_days < 1:
            raise InputError(f"--chunk-days: must be >= 1, got {self.chunk_days}")


def day_id(index: int) -> str:
    """The six-digit day id used in file names and metadata keys."""
    return f"{index:06d}"


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _splits(source: DaySource, options: PrepareOptions) -> dict[str, list[int]]:
    period = np.flatnonzero(~source.is_test)
    if period.size < 2:
        raise InputError(f"{source.describe}: the training period has {period.size} day(s); at least 2 are needed")
    n_val = int(round(options.val_fraction * period.size))
    n_val = min(n_val, period.size - 1)
    if options.split == "time":
        val = period[period.size - n_val :] if n_val else period[:0]
    else:
        val = np.sort(np.random.default_rng(options.seed).choice(period, n_val, replace=False))
    train = np.setdiff1d(period, val)
    return {"train": train.tolist(), "val": val.tolist(), "test": np.flatnonzero(source.is_test).tolist()}


def prepare(source: DaySource, output_dir: str | Path, options: PrepareOptions | None = None) -> dict:
    """Write ``<output_dir>/data`` from ``source`` and return the summary (also in metadata/summary.json).

    Statistics (normalization, thresholds, categories) come from the training period (train + val
    splits) and from valid pixels only; missing observations (NaN) never count.
    """
    options = options or PrepareOptions()
    options.validate()
    if (Path(output_dir) / "data").exists() and not options.overwrite:
        raise InputError(f"{Path(output_dir) / 'data'}: already exists (pass --overwrite to replace it)")
    H, W = source.hr_shape
    n_channels = len(source.variables)
    splits = _splits(source, options)
    in_period = ~source.is_test
    domain = source.valid_hint if source.valid_hint is not None else np.ones((H, W), bool)

    def target_chunk(start: int, stop: int) -> np.ndarray:
        values = source.read_target_mm(start, stop)
        if values.shape[1:] != (H, W):
            raise InputError(f"{source.describe}: target chunk has shape {values.shape[1:]}, expected {(H, W)}")
        values = values.astype(np.float32, copy=True)
        values[:, ~domain] = np.nan
        return values

    # ---- pass 1: statistics -------------------------------------------------------------------
    count_any = np.zeros((H, W), np.int64)
    count_train = np.zeros((H, W), np.float64)
    total = np.zeros((H, W), np.float64)
    total_sq = np.zeros((H, W), np.float64)
    chan_n = 0
    chan_sum = np.zeros(n_channels, np.float64)
    chan_sq = np.zeros(n_channels, np.float64)
    land_mask = source.land_mask
    land_means = np.full(source.n_days, np.nan)
    wet_fraction = np.full(source.n_days, np.nan)
    percentiles = StreamingPercentiles(list(PERCENTILES.values()))
    wet_count = 0

    bar = dict(total=source.n_days, disable=not options.progress, unit="day", leave=False)
    progress = tqdm(desc="prepare: statistics", **bar)
    for start, stop in _chunks(source.n_days, options.chunk_days):
        progress.update(stop - start)
        target = target_chunk(start, stop)
        finite = np.isfinite(target)
        count_any += finite.sum(axis=0)
        land = finite if land_mask is None else finite & land_mask
        n_land = land.sum(axis=(1, 2))
        with np.errstate(invalid="ignore"):
            land_means[start:stop] = np.where(land, target, 0.0).sum(axis=(1, 2)) / np.where(n_land, n_land, np.nan)
            wet_fraction[start:stop] = (land & (target >= WET_MM_PER_DAY)).sum(axis=(1, 2)) / np.where(
                n_land, n_land, np.nan
            )
        period = in_period[start:stop]
        if period.any():
            values = target[period]
            ok = finite[period]
            logs = np.log1p(np.where(ok, values, 0.0).astype(np.float64))
            count_train += ok.sum(axis=0)
            total += logs.sum(axis=0)
            total_sq += (logs**2).sum(axis=0)
            percentiles.count(values[ok])
            wet_count += int((values[ok] >= WET_MM_PER_DAY).sum())
        inputs = source.read_predictors(start, stop)
        if inputs.shape[1:] != (n_channels, *source.lr_shape):
            raise InputError(
                f"{source.describe}: predictors have shape {inputs.shape[1:]}, "
                f"expected {(n_channels, *source.lr_shape)}"
            )
        if period.any() and source.predictor_stats is None:
            x = inputs[period].astype(np.float64)
            chan_n += x.shape[0] * x.shape[2] * x.shape[3]
            chan_sum += x.sum(axis=(0, 2, 3))
            chan_sq += (x**2).sum(axis=(0, 2, 3))

    valid = count_any > 0
    if not valid.any():
        raise InputError(f"{source.describe}: the target has no finite value on any day")
    if percentiles.n == 0:
        raise InputError(f"{source.describe}: the training period has no finite target value")
    land_sea = land_mask if land_mask is not None else valid
    normalization = Normalization(*(source.target_stats or finalize_target_stats(count_train, total, total_sq)))
    if source.predictor_stats is not None:
        x_mean, x_std = source.predictor_stats
    else:
        x_mean = chan_sum / chan_n
        x_std = np.maximum(np.sqrt(np.maximum(chan_sq / chan_n - x_mean**2, 0.0)), PREDICTOR_STD_FLOOR)
    x_mean = np.asarray(x_mean, np.float32)
    x_std = np.asarray(x_std, np.float32)

    period_means = land_means[in_period]
    if not np.isfinite(period_means).any():
        raise InputError(f"{source.describe}: no training-period day has data over land")
    heavy_threshold = float(np.nanpercentile(period_means, 100.0 * options.heavy_quantile))
    categories: dict[str, str] = {}
    for i, m in enumerate(land_means):
        if not np.isfinite(m):
            categories[day_id(i)] = "missing"
        elif m >= heavy_threshold:
            categories[day_id(i)] = "heavy"
        elif m < options.dry_mm_per_day:
            categories[day_id(i)] = "dry"
        else:
            categories[day_id(i)] = "moderate"

    # ---- pass 2: write per-day files ------------------------------------------------------------
    percentiles.plan()
    output_dir = Path(output_dir)
    with staged_directory(output_dir / "data", overwrite=options.overwrite) as root:
        for sub in ("X_lr", "Y_hr", "statics", "metadata"):
            (root / sub).mkdir()
        progress.close()
        progress = tqdm(desc="prepare: writing", **bar)
        for start, stop in _chunks(source.n_days, options.chunk_days):
            progress.update(stop - start)
            target = target_chunk(start, stop)
            period = in_period[start:stop]
            if period.any():
                values = target[period]
                percentiles.collect(values[np.isfinite(values)])
            if source.read_target_normalized is not None:
                z = source.read_target_normalized(start, stop).astype(np.float32, copy=True)
                z[~np.isfinite(target)] = np.nan
            else:
                z = normalization.to_z(target)
            x = ((source.read_predictors(start, stop) - x_mean[:, None, None]) / x_std[:, None, None]).astype(
                np.float32
            )
            for k in range(stop - start):
                np.save(root / "X_lr" / f"day_{day_id(start + k)}.npy", x[k])
                np.save(root / "Y_hr" / f"day_{day_id(start + k)}.npy", z[k][None])

        progress.close()
        thresholds_mm = {key: percentiles.result()[p] for key, p in PERCENTILES.items()}
        summary = _write_metadata(
            root,
            source,
            options,
            splits=splits,
            categories=categories,
            thresholds_mm=thresholds_mm,
            heavy_threshold=heavy_threshold,
            wet_share=wet_count / percentiles.n,
            n_values=percentiles.n,
            normalization=normalization,
            predictor_stats=(x_mean, x_std),
            valid=valid,
            count_any=count_any,
            land_sea=land_sea,
            land_means=land_means,
            wet_fraction=wet_fraction,
        )
    return summary


def _write_metadata(root: Path, source: DaySource, options: PrepareOptions, **s) -> dict:
    H, W = source.hr_shape
    meta, statics = root / "metadata", root / "statics"
    normalization: Normalization = s["normalization"]
    x_mean, x_std = s["predictor_stats"]
    valid, count_any, land_sea = s["valid"], s["count_any"], s["land_sea"]
    n_days = source.n_days

    # statics
    save_npy(statics / "valid_mask.npy", valid)
    save_npy(statics / "land_sea_mask.npy", land_sea.astype(np.float32))
    save_npy(statics / "data_fraction.npy", (count_any / n_days).astype(np.float32))
    dist, how = distance_to_coast_km(land_sea, source.hr_lat, source.hr_lon, options.spacing_km)
    save_npy(statics / "dist_to_coast_km.npy", dist)
    if source.elevation_m is not None:
        save_npy(statics / "elevation.npy", np.asarray(source.elevation_m, np.float32))
    for name, grid in (
        ("lat", source.hr_lat),
        ("lon", source.hr_lon),
        ("lr_lat", source.lr_lat),
        ("lr_lon", source.lr_lon),
    ):
        if grid is not None:
            save_npy(statics / f"{name}.npy", np.asarray(grid, np.float64))

    # normalization
    target_info = normalization.save(meta)
    normalized_files = {}
    for key in NORMALIZED_THRESHOLDS:
        name = f"threshold_{key}_normalized.npy"
        save_npy(meta / name, normalization.threshold_z(s["thresholds_mm"][key]))
        normalized_files[key] = name
    period_days = int((~source.is_test).sum())
    write_json(
        meta / "normalization.json",
        {
            "target": {
                **target_info,
                "missing": "NaN in Y_hr marks a missing observation; it never counts in losses or metrics",
                "computed_over": "given by the SRDRN directory (ERA5_mean_train.npy, ERA5_std_train.npy)"
                if source.read_target_normalized is not None
                else f"training period ({period_days} days), valid pixels with data",
            },
            "predictors": {
                "forward": "x = (raw - mean[c]) / std[c], per channel",
                "variables": source.variables,
                "units": source.variable_units,
                "mean": x_mean.tolist(),
                "std": x_std.tolist(),
                "computed_over": "already normalized by SRDRN preprocessing"
                if source.read_target_normalized is not None
                else f"training period ({period_days} days), all grid cells",
            },
        },
    )

    # thresholds and categories
    write_json(
        meta / "thresholds.json",
        {
            **{key: float(v) for key, v in s["thresholds_mm"].items()},
            "units": "mm/day",
            "how": (
                f"np.percentile (linear) of every valid pixel value with data on the {period_days} days of the "
                f"training period (train + val splits; {s['n_values']} values, dry ones included), exact"
            ),
            "wet_threshold_mm_per_day": WET_MM_PER_DAY,
            "wet_share_of_pixel_values": float(s["wet_share"]),
            "normalized_equivalents": normalized_files,
            "normalized_how": "(log1p(threshold) - mean) / std per pixel: z >= it exactly where pr >= threshold",
            "categories": {
                "heavy_land_mean_mm_per_day": s["heavy_threshold"],
                "heavy_quantile": options.heavy_quantile,
                "dry_land_mean_mm_per_day": options.dry_mm_per_day,
                "rule": (
                    f"land mean = mean over land pixels with data that day; heavy: land mean >= "
                    f"P{100 * options.heavy_quantile:g} of training-period land means "
                    f"({s['heavy_threshold']:.3f} mm/day); dry: land mean < {options.dry_mm_per_day:g} mm/day; "
                    "moderate: otherwise; missing: no land pixel with data"
                ),
            },
        },
    )
    write_json(meta / "categories.json", s["categories"])
    write_json(meta / "split.json", s["splits"])
    h, w = source.lr_shape
    write_json(meta / "H_W.json", {"H": H, "W": W, "h": h, "w": w, "C": len(source.variables)})
    dates = source.dates
    write_json(
        meta / "dates.json",
        {day_id(i): (str(dates[i]) if dates is not None else None) for i in range(n_days)},
    )
    write_json(
        meta / "variables.json",
        {
            "variables": [
                {"name": n, "units": u, "mean": float(m), "std": float(sd), **({"derived_from_target": d} if d else {})}
                for n, u, m, sd, d in zip(
                    source.variables,
                    source.variable_units,
                    x_mean,
                    x_std,
                    source.derived or [None] * len(source.variables),
                    strict=True,
                )
            ]
        },
    )
    save_npy(meta / "land_mean_mm_per_day.npy", s["land_means"].astype(np.float32))
    save_npy(meta / "land_wet_fraction.npy", s["wet_fraction"].astype(np.float32))

    # summary
    always = int((count_any == n_days).sum())
    gaps = valid & (count_any < n_days)
    cats = s["categories"]
    per_split = {
        name: {c: sum(cats[day_id(i)] == c for i in ids) for c in ("dry", "moderate", "heavy", "missing")}
        for name, ids in s["splits"].items()
    }
    for name, ids in s["splits"].items():
        per_split[name]["days"] = len(ids)
    notes = list(source.notes) + list(getattr(source, "clip_report", lambda: [])())
    missing_line = (
        f"valid pixels: {int(valid.sum())} of {H * W} ({always} with data every day"
        + (
            f"; {int(gaps.sum())} with gaps, the worst missing {int(n_days - count_any[gaps].min())} of {n_days} days"
            if gaps.any()
            else ""
        )
        + "); missing observations are NaN in Y_hr and never count in statistics, losses or metrics"
    )
    summary = {
        "input": source.describe,
        "oracle": source.oracle_path,
        "days": n_days,
        "splits": per_split,
        "thresholds_mm_per_day": {k: float(v) for k, v in s["thresholds_mm"].items()},
        "heavy_land_mean_mm_per_day": s["heavy_threshold"],
        "median_land_dry_fraction": float(np.nanmedian(1.0 - s["wet_fraction"][~source.is_test])),
        "valid_pixels": int(valid.sum()),
        "missing": missing_line,
        "dist_to_coast": how,
        "shapes": {"X_lr": [len(source.variables), h, w], "Y_hr": [1, H, W]},
        "notes": notes,
        "options": asdict(options),
    }
    write_json(meta / "summary.json", summary)
    write_text(meta / "summary.txt", format_summary(summary, root.parent / "data"))
    return summary


def format_summary(summary: dict, where: Path) -> str:
    """The human-readable summary printed at the end of `prepare`."""
    lines = [f"prepared dataset: {where}", f"  input: {summary['input']}"]
    lines.append(
        f"  X_lr {tuple(summary['shapes']['X_lr'])}, Y_hr {tuple(summary['shapes']['Y_hr'])}, {summary['days']} days"
    )
    for name, c in summary["splits"].items():
        lines.append(
            f"  {name:5s} {c['days']:6d} days: dry {c['dry']}, moderate {c['moderate']}, heavy {c['heavy']}"
            + (f", missing {c['missing']}" if c["missing"] else "")
        )
    t = summary["thresholds_mm_per_day"]
    lines.append(
        "  thresholds (mm/day, valid pixels of training-period days): "
        + ", ".join(f"{k} {v:.2f}" for k, v in t.items())
    )
    lines.append(f"  heavy day: land mean >= {summary['heavy_land_mean_mm_per_day']:.2f} mm/day")
    lines.append(
        f"  median dry fraction of land pixels (< {WET_MM_PER_DAY} mm/day): {summary['median_land_dry_fraction']:.2f}"
    )
    lines.append(f"  {summary['missing']}")
    lines.append(f"  distance to coast: {summary['dist_to_coast']}")
    lines.extend(f"  note: {n}" for n in summary["notes"])
    return "\n".join(lines) + "\n"
