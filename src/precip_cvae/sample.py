"""Draw synthetic high-resolution days from a trained cVAE, gate them in mm/day, and write them out.

Files follow the reference's naming in ``<outputs_root>/synth/``: ``day_XXXXXX_sample_YY.Y_hr_syn.npy``
(1, H, W), normalized like Y_hr, and ``day_XXXXXX_sample_YY.X_lr_ref.npy`` (C, h, w), the real day's input;
plus ``samples.nc`` (CF, ``pr(realization, time, y, x)`` in mm/day, every sample with its verdict) and
``manifest.json`` (what was drawn, with which checkpoint, and what the gate decided and why).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import netCDF4
import numpy as np
import torch
from tqdm.auto import tqdm

from precip_cvae import __version__
from precip_cvae.checkpoint import load_checkpoint
from precip_cvae.config import Config
from precip_cvae.data.dataset import PreparedData
from precip_cvae.data.normalize import target_to_mm_per_day
from precip_cvae.errors import InputError
from precip_cvae.fileio import staged_directory, write_json
from precip_cvae.quality import Climatology, GateConfig, assess_day, summarize


@dataclass(frozen=True)
class SampleOptions:
    """What to draw: ``mode`` posterior|prior, ``K`` per day, ``days`` (heavy_only, split:NAME, file:PATH)."""

    mode: str = "posterior"
    K: int = 2
    days: str = "heavy_only"
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 16
    keep_rejected: bool = False


def select_days(data: PreparedData, spec: str) -> list[int]:
    """Day ids for ``--days``.

    ``heavy_only``: heavy days of the train split (synthetic data for training must not come from
    validation or test days); ``split:train|val|test``: every day of that split; ``file:PATH``: ids one per
    line (e.g. ``123`` or ``000123``; ``#`` starts a comment).
    """
    if spec == "heavy_only":
        ids = [i for i in data.ids("train") if data.is_heavy(i)]
        if not ids:
            raise InputError("--days heavy_only: the train split has no heavy day")
        return ids
    if spec.startswith("split:"):
        return data.ids(spec[len("split:") :])
    if spec.startswith("file:"):
        path = Path(spec[len("file:") :])
        if not path.is_file():
            raise InputError(f"--days {spec}: file not found")
        known = set(data.split["train"] + data.split["val"] + data.split["test"])
        ids, unknown = [], []
        for line in path.read_text().splitlines():
            text = line.split("#")[0].strip()
            if not text:
                continue
            try:
                value = int(text)
            except ValueError:
                unknown.append(text)
                continue
            (ids if value in known else unknown).append(value)
        if unknown:
            shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            raise InputError(f"{path}: unknown day ids: {shown}")
        if not ids:
            raise InputError(f"{path}: no day ids")
        return ids
    raise InputError(f"--days: {spec!r} is not heavy_only, split:NAME or file:PATH")


def load_generator(config: Config, checkpoint: str | Path | None, data: PreparedData, device: torch.device):
    """The trained model of ``checkpoint`` (default: ``<outputs_root>/checkpoints/cvae_best.pt``), checked
    against the dataset it will sample for."""
    from precip_cvae.train import build_model_from_checkpoint

    path = Path(checkpoint) if checkpoint else Path(config.data.outputs_root) / "checkpoints" / "cvae_best.pt"
    state = load_checkpoint(path, map_location="cpu")
    shapes = state["shapes"]
    expected = {
        "in_channels": data.n_channels,
        "lr_shape": list(data.lr_shape),
        "hr_shape": list(data.hr_shape),
        "statics": list(data.static_names),
    }
    if shapes != expected:
        raise InputError(f"{path}: trained for {shapes}, but {data.root} has {expected}")
    mean = state["normalization"]["target_log1p_mean"].numpy()
    if not np.allclose(mean, data.target_mean, atol=1e-5):
        raise InputError(f"{path}: trained with another normalization than {data.root}")
    return build_model_from_checkpoint(state, device), path, state


def _create_netcdf(path: Path, data: PreparedData, options: SampleOptions, checkpoint: Path) -> netCDF4.Dataset:
    H, W = data.hr_shape
    ds = netCDF4.Dataset(path, "w", format="NETCDF4")
    ds.Conventions = "CF-1.8"
    ds.title = "precip-cvae synthetic daily precipitation"
    ds.source = f"precip-cvae {__version__}, checkpoint {checkpoint}"
    ds.sampling_mode = options.mode
    ds.temperature = options.temperature
    ds.seed = options.seed
    ds.days = options.days
    ds.createDimension("realization", options.K)
    ds.createDimension("time", None)
    ds.createDimension("y", H)
    ds.createDimension("x", W)
    real = ds.createVariable("realization", "i4", ("realization",))
    real.long_name = "sample index within a day"
    real[:] = np.arange(options.K)
    time = ds.createVariable("time", "f8", ("time",))
    time.standard_name = "time"
    time.units = "days since 1970-01-01"
    time.calendar = "proleptic_gregorian"
    day = ds.createVariable("day_id", "i4", ("time",))
    day.long_name = "day id of the prepared dataset (file day_XXXXXX)"
    lat_path, lon_path = data.root / "statics" / "lat.npy", data.root / "statics" / "lon.npy"
    coordinates = ""
    if lat_path.is_file() and lon_path.is_file():
        for name, p, std, units in (("lat", lat_path, "latitude", "degrees_north"), ("lon", lon_path, "longitude",
                                                                                       "degrees_east")):  # fmt: skip
            v = ds.createVariable(name, "f8", ("y", "x"))
            v.standard_name = std
            v.units = units
            v[:] = np.load(p)
        coordinates = "lat lon"
    pr = ds.createVariable(
        "pr", "f4", ("realization", "time", "y", "x"), zlib=True, complevel=1, chunksizes=(1, 1, H, W),
        fill_value=np.float32(np.nan),
    )  # fmt: skip
    pr.standard_name = "lwe_precipitation_rate"
    pr.long_name = "synthetic daily precipitation"
    pr.units = "mm/day"
    pr.cell_methods = "time: mean"
    if coordinates:
        pr.coordinates = coordinates
    acc = ds.createVariable("accepted", "i1", ("realization", "time"))
    acc.long_name = "1 if the sample passed the quality gate (see manifest.json for the reasons)"
    acc.flag_values = np.array([0, 1], dtype=np.int8)
    acc.flag_meanings = "rejected accepted"
    return ds


def run_sample(
    config: Config,
    options: SampleOptions,
    gate: GateConfig,
    checkpoint: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Draw ``options.K`` samples for each selected day, gate them and write the outputs atomically.

    Returns the manifest's summary (counts, reasons, mean spread between samples of a day).
    """
    if options.mode not in ("posterior", "prior"):
        raise InputError(f"--mode: must be posterior or prior, got {options.mode!r}")
    if options.K < 1:
        raise InputError(f"--K: must be >= 1, got {options.K}")
    if options.temperature < 0:
        raise InputError(f"--temperature: must be >= 0, got {options.temperature}")
    data = PreparedData(config.data.data_root)
    from precip_cvae.train import select_device

    device = select_device(config.train.device)
    model, ckpt_path, state = load_generator(config, checkpoint, data, device)
    ids = select_days(data, options.days)
    period = data.split["train"] + data.split["val"]
    climatology = Climatology.from_days(
        data.land_wet_fraction[period],
        [data.categories[f"{i:06d}"] for i in period],
        data.thresholds_mm.get("max", data.thresholds_mm["P99.9"]),
        gate.wet_margin,
    )
    out_dir = Path(out_dir) if out_dir else Path(config.data.outputs_root) / "synth"
    statics = torch.from_numpy(data.statics)[None].to(device)
    generator = torch.Generator(device=device).manual_seed(options.seed)
    land = data.land_mask
    records: list[dict] = []
    spreads: list[float] = []
    with staged_directory(out_dir, overwrite=True) as root:
        if options.keep_rejected:
            (root / "rejected").mkdir()
        nc = _create_netcdf(root / "samples.nc", data, options, ckpt_path)
        try:
            bar = tqdm(total=len(ids), desc=f"sample ({options.mode}, K={options.K})", unit="day", disable=not progress)
            for start in range(0, len(ids), options.batch_size):
                batch_ids = ids[start : start + options.batch_size]
                inputs, z, mm = draw_batch(model, data, batch_ids, statics, options, generator)
                for b, day in enumerate(batch_ids):
                    records.extend(
                        _gate_and_write(root, data, day, inputs[b], z[b], mm[b], land, climatology, gate, options)
                    )
                    if options.K >= 2:
                        spreads.append(_pairwise_spread(mm[b], land))
                    t = nc.dimensions["time"].size
                    date = data.date(day)
                    nc["time"][t] = (
                        (np.datetime64(date, "D") - np.datetime64("1970-01-01", "D")).astype(int) if date else np.nan
                    )
                    nc["day_id"][t] = day
                    nc["pr"][:, t] = np.where(np.isfinite(mm[b]), mm[b], np.nan)
                    nc["accepted"][:, t] = [int(r["accepted"]) for r in records[-options.K :]]
                bar.update(len(batch_ids))
            bar.close()
        finally:
            nc.close()
        summary = summarize(records)
        summary["days"] = len(ids)
        summary["mean_pairwise_spread_mm_per_day"] = float(np.mean(spreads)) if spreads else None
        write_json(
            root / "manifest.json",
            {
                "checkpoint": str(ckpt_path),
                "checkpoint_epoch": int(state["epoch"]) + 1,
                "options": asdict(options),
                "gate": asdict(gate),
                "climatology": {"wet_band": climatology.wet_band, "record_max_mm_per_day": climatology.record_max},
                "data_root": str(data.root),
                "summary": summary,
                "samples": records,
            },
        )
    return summary


def draw_batch(model, data: PreparedData, days: list[int], statics: torch.Tensor, options, generator):
    """K samples for each of ``days``: the inputs (B, C, h, w), normalized samples (B, K, H, W) and the same in
    mm/day, NaN outside the valid mask. ``options`` gives ``K``, ``temperature`` and ``mode``."""
    device = statics.device
    inputs = np.stack([data.inputs(i) for i in days])
    targets = np.stack([data.target(i) for i in days])
    with torch.no_grad():
        z = model.sample(
            torch.from_numpy(inputs).to(device), statics, n_samples=options.K, temperature=options.temperature,
            mode=options.mode, target=torch.from_numpy(np.nan_to_num(targets, nan=0.0)).to(device),
            generator=generator,
        )  # fmt: skip
    z = z.float().cpu().numpy()[:, :, 0]
    z[:, :, ~data.valid_mask] = np.nan
    return inputs, z, target_to_mm_per_day(z, data.target_mean, data.target_std)


def _pairwise_spread(mm: np.ndarray, land: np.ndarray) -> float:
    """Mean absolute difference between the K samples of one day over land, averaged over pairs (mm/day)."""
    values = mm[:, land]
    diffs = [np.abs(values[i] - values[j]).mean() for i in range(len(values)) for j in range(i + 1, len(values))]
    return float(np.mean(diffs))


def _gate_and_write(root, data, day, inputs, z, mm, land, climatology, gate, options) -> list[dict]:
    verdicts = assess_day(mm, data.target_mm(day), land, data.categories[f"{day:06d}"], climatology, gate)
    out = []
    for k, verdict in enumerate(verdicts):
        stem = f"day_{day:06d}_sample_{k:02d}"
        folder = root if verdict["accepted"] else (root / "rejected" if options.keep_rejected else None)
        if folder is not None:
            np.save(folder / f"{stem}.Y_hr_syn.npy", z[k][None].astype(np.float32))
            np.save(folder / f"{stem}.X_lr_ref.npy", inputs.astype(np.float32))
        out.append({"day": day, "sample": k, "file": stem if verdict["accepted"] else None, **verdict})
    return out


def format_summary(summary: dict, out_dir: Path) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items()) or "none"
    spread = summary["mean_pairwise_spread_mm_per_day"]
    return (
        f"samples -> {out_dir}: {summary['days']} days, {summary['samples']} samples, "
        f"{summary['accepted']} accepted, {summary['rejected']} rejected (reasons: {reasons})"
        + (f"; mean spread between samples of a day {spread:.3f} mm/day" if spread is not None else "")
    )
