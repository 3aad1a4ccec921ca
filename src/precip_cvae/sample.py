"""Draw synthetic high-resolution days from a trained cVAE, gate them in mm/day, and write them out.

Files follow the reference's naming in ``<outputs_root>/synth/``: ``day_XXXXXX_sample_YY.Y_hr_syn.npy``
(1, H, W), normalized like Y_hr, and ``day_XXXXXX_sample_YY.X_lr_ref.npy`` (C, h, w), the real day's input;
plus ``samples.nc`` (CF, ``pr(realization, time, y, x)`` in mm/day, every sample with its verdict) and
``manifest.json`` (what was drawn, with which checkpoint, and what the gate decided and why).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from precip_cvae import __version__, conserve, distributed
from precip_cvae.config import PRESERVE_MASS, Config
from precip_cvae.data.dataset import PreparedData
from precip_cvae.data.sample_store import SampleWriter
from precip_cvae.errors import InputError
from precip_cvae.fileio import content_sha256, staged_directory
from precip_cvae.generator import Generator, select_device
from precip_cvae.quality import Climatology, GateConfig, assess_day, summarize

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleOptions:
    """What to draw: ``mode`` posterior|prior, ``K`` per day, ``days`` (heavy_only, split:NAME, file:PATH), and
    ``preserve_mass`` (none, domain, cells: :mod:`precip_cvae.conserve`)."""

    mode: str = "posterior"
    K: int = 2
    days: str = "heavy_only"
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 16
    keep_rejected: bool = False
    preserve_mass: str = "none"


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


def run_sample(
    config: Config,
    options: SampleOptions,
    gate: GateConfig | None = None,
    checkpoint: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Draw ``options.K`` samples for each selected day, gate them and write the outputs atomically.

    ``gate`` defaults to the config's (:meth:`~precip_cvae.config.Config.gate_config`). Returns the manifest's summary
    (counts, reasons, mean spread between samples of a day). Batch b of the days draws from a generator seeded by
    ``options.seed`` and b. Started by ``torchrun``, each process draws and gates every N-th batch and rank 0 writes
    them all, in order (the other ranks return an empty dict): the same files as one process.
    """
    gate = gate or config.gate_config()
    if options.mode not in ("posterior", "prior"):
        raise InputError(f"--mode: must be posterior or prior, got {options.mode!r}")
    if options.K < 1:
        raise InputError(f"--K: must be >= 1, got {options.K}")
    if options.temperature < 0:
        raise InputError(f"--temperature: must be >= 0, got {options.temperature}")
    if options.preserve_mass not in PRESERVE_MASS:
        raise InputError(f"--preserve-mass: must be one of {', '.join(PRESERVE_MASS)}, got {options.preserve_mass!r}")
    data = PreparedData(config.data.data_root)
    block = conserve.cell_factor(data) if options.preserve_mass == "cells" else None
    requested = select_device(config.train.device)
    ctx = distributed.context(requested)
    gen = Generator.from_outputs(data, config.data.outputs_root, checkpoint, distributed.rank_device(requested, ctx))
    ids = select_days(data, options.days)
    data.check_days(ids)
    period = data.split["train"] + data.split["val"]
    climatology = Climatology.from_days(
        data.land_wet_fraction[period],
        [data.categories[f"{i:06d}"] for i in period],
        data.thresholds_mm.get("max", data.thresholds_mm["P99.9"]),
        gate.wet_margin,
    )
    out_dir = Path(out_dir) if out_dir else Path(config.data.outputs_root) / "synth"
    land = data.land_mask
    batches = [ids[s : s + options.batch_size] for s in range(0, len(ids), options.batch_size)]

    def drawn(index: int) -> tuple:
        """Batch ``index``: its days, their inputs, samples (normalized and mm/day) and the gate's verdicts."""
        batch_ids = batches[index]
        rng = gen.rng(distributed.batch_seed(options.seed, index))
        inputs, z, mm = gen.draw(batch_ids, options.K, options.mode, options.temperature, rng)
        verdicts = []
        for b, day in enumerate(batch_ids):
            real = data.target_mm(day)
            kept, info = conserve.conserve(mm[b], real, data.valid_mask, land, options.preserve_mass, block)
            if options.preserve_mass != "none":  # as drawn otherwise, bit for bit
                mm[b] = kept
                z[b] = data.normalization.to_z(kept)
            day_verdicts = assess_day(mm[b], real, land, data.categories[f"{day:06d}"], climatology, gate)
            verdicts.append([{**v, "drawn_mass_ratio": info["drawn_mass_ratio"][k], "unscaled_cells":
                              info["unscaled_cells"][k]} for k, v in enumerate(day_verdicts)])  # fmt: skip
        return batch_ids, inputs, z, mm, verdicts

    def in_order():
        """Every batch, in order, on rank 0 (each rank draws every N-th one; nothing is yielded on the others)."""
        for first in range(0, len(batches), ctx.world):
            index = first + ctx.rank
            for part in ctx.gather(drawn(index) if index < len(batches) else None):
                if part is not None and ctx.main:
                    yield part

    if not ctx.main:
        for _ in in_order():
            pass
        return {}
    records: list[dict] = []
    spreads: list[float] = []
    attributes = {
        "source": f"precip-cvae {__version__}, checkpoint {gen.path}",
        "sampling_mode": options.mode,
        "temperature": options.temperature,
        "seed": options.seed,
        "days": options.days,
        "preserve_mass": options.preserve_mass,
    }
    with staged_directory(out_dir, overwrite=True) as root:
        writer = SampleWriter(
            root, options.K, data.hr_shape, attributes, data.hr_lat, data.hr_lon, keep_rejected=options.keep_rejected,
            dated=all(data.date(day) for day in ids),
        )  # fmt: skip
        with writer:
            bar = tqdm(total=len(ids), desc=f"sample ({options.mode}, K={options.K})", unit="day", disable=not progress)
            for batch_ids, inputs, z, mm, batch_verdicts in in_order():
                for b, day in enumerate(batch_ids):
                    verdicts = batch_verdicts[b]
                    stems = writer.add_day(day, data.date(day), inputs[b], z[b], mm[b], verdicts)
                    records.extend(
                        {"day": day, "sample": k, "file": name, **v}
                        for k, (name, v) in enumerate(zip(stems, verdicts, strict=True))
                    )
                    if options.K >= 2:
                        spreads.append(_pairwise_spread(mm[b], land))
                bar.update(len(batch_ids))
            bar.close()
            summary = summarize(records)
            summary["days"] = len(ids)
            summary["preserve_mass"] = options.preserve_mass
            summary["mean_pairwise_spread_mm_per_day"] = float(np.mean(spreads)) if spreads else None
            if summary["mass_bias"]:
                logger.warning(summary["mass_bias"])
            writer.finish(
                {
                    "checkpoint": str(gen.path),
                    "checkpoint_epoch": gen.epoch,
                    "checkpoint_sha256": content_sha256(gen.path),
                    "metadata_sha256": data.metadata_sha256,
                    "options": asdict(options),
                    "gate": asdict(gate),
                    "climatology": {"wet_band": climatology.wet_band, "record_max_mm_per_day": climatology.record_max},
                    "data_root": str(data.root),
                    "summary": summary,
                    "samples": records,
                }
            )
    return summary


def _pairwise_spread(mm: np.ndarray, land: np.ndarray) -> float:
    """Mean absolute difference between the K samples of one day over land, averaged over pairs (mm/day)."""
    values = mm[:, land]
    diffs = [np.abs(values[i] - values[j]).mean() for i in range(len(values)) for j in range(i + 1, len(values))]
    return float(np.mean(diffs))


def format_summary(summary: dict, out_dir: Path) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items()) or "none"
    spread = summary["mean_pairwise_spread_mm_per_day"]
    ratio = summary.get("accepted_mass_ratio")
    return (
        f"samples -> {out_dir}: {summary['days']} days, {summary['samples']} samples, "
        f"{summary['accepted']} accepted, {summary['rejected']} rejected (reasons: {reasons})"
        + (f"; mean spread between samples of a day {spread:.3f} mm/day" if spread is not None else "")
        + (f"; accepted samples carry {ratio:.3f} x their day's land total" if ratio is not None else "")
        + (
            f" (drawn: {summary['drawn_mass_ratio']:.3f} x, rescaled: preserve_mass {summary['preserve_mass']})"
            if summary.get("preserve_mass", "none") != "none" and summary.get("drawn_mass_ratio") is not None
            else ""
        )
    )
