"""Merge accepted synthetic samples with the real training days, in SRDRN's format (the reference's Option B),
or on the fly in a ``torch`` Dataset (its Option A)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from precip_cvae.data.dataset import DayDataset, PreparedData
from precip_cvae.errors import InputError
from precip_cvae.fileio import read_json, staged_directory, write_json, write_text

SAMPLE_NAME = re.compile(r"day_(\d{6})_sample_(\d{2})\.Y_hr_syn\.npy$")


def accepted_samples(synth_dir: str | Path) -> dict[int, list[int]]:
    """Day id → indices of the accepted samples found in ``synth_dir`` (per the manifest, files present)."""
    synth_dir = Path(synth_dir)
    manifest = read_json(synth_dir / "manifest.json")
    found: dict[int, list[int]] = {}
    for record in manifest["samples"]:
        if not record["accepted"]:
            continue
        stem = f"day_{record['day']:06d}_sample_{record['sample']:02d}"
        for suffix in (".Y_hr_syn.npy", ".X_lr_ref.npy"):
            if not (synth_dir / f"{stem}{suffix}").is_file():
                raise InputError(f"{synth_dir}/{stem}{suffix}: listed as accepted in manifest.json but missing")
        found.setdefault(int(record["day"]), []).append(int(record["sample"]))
    return found


def srdrn_target(z: np.ndarray, data: PreparedData) -> np.ndarray:
    """Normalized target with SRDRN's convention for pixels without data: the value of 0 mm/day (no NaN)."""
    dry = (-data.target_mean / data.target_std).astype(np.float32)
    return np.where(np.isfinite(z), z, dry).astype(np.float32)


def run_augment(
    data_root: str | Path,
    synth_dir: str | Path,
    out_dir: str | Path,
    per_day: int = 1,
    synthetic_weight: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write ``predictors_train_augmented.npy`` (N, h, w, C), ``obs_train_augmented.npy`` (N, H, W),
    ``augmented_rows.csv`` and optionally ``sample_weights.npy`` (N,) into ``out_dir``.

    Rows are the real days of the train split in order, then up to ``per_day`` accepted synthetic samples of
    each day. Arrays are filled through memory maps, a day at a time.
    """
    if per_day < 0:
        raise InputError(f"--per-day: must be >= 0, got {per_day}")
    data = PreparedData(data_root)
    samples = accepted_samples(synth_dir)
    real_ids = data.ids("train")
    foreign = sorted(set(samples) - set(real_ids))
    if foreign:
        raise InputError(
            f"{synth_dir}: samples of days outside the train split ({', '.join(map(str, foreign[:5]))}); "
            "augmenting training data with them would leak validation or test days"
        )
    synthetic = [(day, k) for day in sorted(samples) for k in sorted(samples[day])[:per_day]]
    n = len(real_ids) + len(synthetic)
    (h, w), (H, W), C = data.lr_shape, data.hr_shape, data.n_channels
    synth_dir = Path(synth_dir)
    rows = io.StringIO()
    table = csv.writer(rows)
    table.writerow(["row", "source", "day_id", "sample", "weight"])
    weights = np.ones(n, np.float32)
    if synthetic_weight is not None:
        weights[len(real_ids) :] = synthetic_weight
    with staged_directory(out_dir, overwrite=overwrite) as root:
        x = np.lib.format.open_memmap(root / "predictors_train_augmented.npy", "w+", np.float32, (n, h, w, C))
        y = np.lib.format.open_memmap(root / "obs_train_augmented.npy", "w+", np.float32, (n, H, W))
        for row in tqdm(range(n), desc="augment", unit="row", disable=not progress):
            if row < len(real_ids):
                day, k, source = real_ids[row], "", "real"
                inputs, target = data.inputs(day), data.target(day)
            else:
                day, k = synthetic[row - len(real_ids)]
                source = "synthetic"
                stem = synth_dir / f"day_{day:06d}_sample_{k:02d}"
                inputs = np.load(f"{stem}.X_lr_ref.npy")
                target = np.load(f"{stem}.Y_hr_syn.npy")
            x[row] = np.transpose(inputs, (1, 2, 0))
            y[row] = srdrn_target(target[0], data)
            table.writerow([row, source, f"{day:06d}", k, f"{weights[row]:g}"])
        x.flush()
        y.flush()
        del x, y
        write_text(root / "augmented_rows.csv", rows.getvalue())
        if synthetic_weight is not None:
            np.save(root / "sample_weights.npy", weights)
        summary = {
            "rows": n,
            "real": len(real_ids),
            "synthetic": len(synthetic),
            "synthetic_days": len({d for d, _ in synthetic}),
            "per_day": per_day,
            "source": str(synth_dir),
            "data_root": str(data.root),
            "target_transform": "z = (log1p(pr_mm_per_day) - mean) / std per pixel; pixels without data hold "
            "the value of 0 mm/day",
        }
        write_json(root / "augment.json", summary)
    return summary


class AugmentedDataset(Dataset):
    """Real training days plus, each epoch, synthetic samples of the heavy days, mixed on the fly.

    Items are those of :class:`~precip_cvae.data.dataset.DayDataset` with one more key, ``synthetic``
    (bool), and ``sample`` (-1 for real days). Call :meth:`set_epoch` at the start of each epoch to draw a
    new choice of samples (reproducible from ``seed`` and the epoch).

    Parameters
    ----------
    data_root : the prepared dataset (``<output_dir>/data``)
    synth_dir : where `precip-cvae sample` wrote accepted samples
    split : which real days ("train")
    per_heavy_day : synthetic samples added per real heavy day per epoch
    """

    def __init__(
        self, data_root: str | Path, synth_dir: str | Path, split: str = "train", per_heavy_day: int = 1, seed: int = 0
    ):
        self.data = PreparedData(data_root)
        self.real = DayDataset(self.data, self.data.ids(split))
        self.synth_dir = Path(synth_dir)
        available = accepted_samples(synth_dir)
        self.pool = {day: ks for day, ks in available.items() if day in set(self.real.ids) and self.data.is_heavy(day)}
        self.per_heavy_day = per_heavy_day
        self.seed = seed
        self.chosen: list[tuple[int, int]] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        self.chosen = []
        for day in sorted(self.pool):
            ks = self.pool[day]
            picks = rng.choice(len(ks), size=min(self.per_heavy_day, len(ks)), replace=False)
            self.chosen.extend((day, ks[i]) for i in sorted(picks))

    def __len__(self) -> int:
        return len(self.real) + len(self.chosen)

    def __getitem__(self, item: int) -> dict:
        if item < len(self.real):
            return {**self.real[item], "synthetic": False, "sample": -1}
        day, k = self.chosen[item - len(self.real)]
        stem = self.synth_dir / f"day_{day:06d}_sample_{k:02d}"
        target = torch.from_numpy(np.load(f"{stem}.Y_hr_syn.npy"))
        valid = torch.from_numpy(self.data.valid_mask)[None] & torch.isfinite(target)
        return {
            "inputs": torch.from_numpy(np.load(f"{stem}.X_lr_ref.npy")),
            "target": torch.where(valid, target, torch.zeros_like(target)),
            "mask": valid,
            "land": valid & torch.from_numpy(self.data.land_mask)[None],
            "index": day,
            "heavy": True,
            "synthetic": True,
            "sample": k,
        }
