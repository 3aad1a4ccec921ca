"""Merge accepted synthetic samples with the real training days, in SRDRN's format (the reference's Option B),
or on the fly in a ``torch`` Dataset (its Option A)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from precip_cvae.data.dataset import DayDataset, PreparedData
from precip_cvae.data.sample_store import SampleStore
from precip_cvae.data.srdrn import AUGMENTED_OBS, AUGMENTED_PREDICTORS
from precip_cvae.errors import InputError
from precip_cvae.fileio import create_npy, staged_directory, write_json, write_text


def srdrn_target(z: np.ndarray, data: PreparedData) -> np.ndarray:
    """Normalized target with SRDRN's convention for pixels without data: the value of 0 mm/day (no NaN)."""
    return np.where(np.isfinite(z), z, data.normalization.dry_z).astype(np.float32)


def run_augment(
    data_root: str | Path,
    synth_dir: str | Path,
    out_dir: str | Path,
    per_day: int = 1,
    synthetic_weight: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write :data:`~precip_cvae.data.srdrn.AUGMENTED_PREDICTORS` (N, h, w, C),
    :data:`~precip_cvae.data.srdrn.AUGMENTED_OBS` (N, H, W),
    ``augmented_rows.csv`` and optionally ``sample_weights.npy`` (N,) into ``out_dir``.

    Rows are the real days of the train split in order, then up to ``per_day`` accepted synthetic samples of
    each day. Arrays are filled through memory maps, a day at a time.
    """
    if per_day < 0:
        raise InputError(f"--per-day: must be >= 0, got {per_day}")
    data = PreparedData(data_root)
    store = SampleStore(synth_dir, data)
    samples = store.accepted()
    real_ids = data.ids("train")
    data.check_days(real_ids)
    foreign = sorted(set(samples) - set(real_ids))
    if foreign:
        raise InputError(
            f"{synth_dir}: samples of days outside the train split ({', '.join(map(str, foreign[:5]))}); "
            "augmenting training data with them would leak validation or test days"
        )
    synthetic = [(day, k) for day in sorted(samples) for k in sorted(samples[day])[:per_day]]
    n = len(real_ids) + len(synthetic)
    (h, w), (H, W), C = data.lr_shape, data.hr_shape, data.n_channels
    rows = io.StringIO()
    table = csv.writer(rows)
    table.writerow(["row", "source", "day_id", "sample", "weight"])
    weights = np.ones(n, np.float32)
    if synthetic_weight is not None:
        weights[len(real_ids) :] = synthetic_weight
    with staged_directory(out_dir, overwrite=overwrite) as root:
        x = create_npy(root / AUGMENTED_PREDICTORS, (n, h, w, C))
        y = create_npy(root / AUGMENTED_OBS, (n, H, W))
        for row in tqdm(range(n), desc="augment", unit="row", disable=not progress):
            if row < len(real_ids):
                day, k, source = real_ids[row], "", "real"
                inputs, target = data.inputs(day), data.target(day)
            else:
                day, k = synthetic[row - len(real_ids)]
                source = "synthetic"
                inputs, target = store.load(day, k)
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
            "source": str(store.root),
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
        self.store = SampleStore(synth_dir, self.data)
        available = self.store.accepted()
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
        inputs, target = (torch.from_numpy(a) for a in self.store.load(day, k))
        valid = torch.from_numpy(self.data.valid_mask)[None] & torch.isfinite(target)
        return {
            "inputs": inputs,
            "target": torch.where(valid, target, torch.zeros_like(target)),
            "mask": valid,
            "land": valid & torch.from_numpy(self.data.land_mask)[None],
            "index": day,
            "heavy": True,
            "synthetic": True,
            "sample": k,
        }
