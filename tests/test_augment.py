"""`augment`: SRDRN arrays with real + accepted synthetic rows, the row table, the round trip, Option A."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from precip_cvae.augment import AugmentedDataset, run_augment
from precip_cvae.cli import main
from precip_cvae.data.dataset import PreparedData
from precip_cvae.errors import InputError
from precip_cvae.sample import SampleOptions, run_sample
from tests.cases import PERMISSIVE


@pytest.fixture(scope="module")
def synth(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "synth"
    # A permissive gate, so that every day has K=3 accepted samples and --per-day=2 has something to cap.
    run_sample(trained, SampleOptions(mode="prior", K=3, days="heavy_only", seed=2), PERMISSIVE, out_dir=out,
               progress=False)  # fmt: skip
    return out


def test_rows_are_real_plus_accepted_synthetic(trained, synth, tmp_path):
    data = PreparedData(trained.data.data_root)
    manifest = json.loads((synth / "manifest.json").read_text())
    accepted = [r for r in manifest["samples"] if r["accepted"]]
    per_day = {}
    for r in accepted:
        per_day[r["day"]] = per_day.get(r["day"], 0) + 1
    summary = run_augment(data.root, synth, tmp_path / "aug", per_day=2, synthetic_weight=0.5, progress=False)
    n_real = len(data.ids("train"))
    n_syn = sum(min(2, n) for n in per_day.values())
    assert summary["rows"] == n_real + n_syn and summary["synthetic"] == n_syn
    x = np.load(tmp_path / "aug" / "predictors_train_augmented.npy", mmap_mode="r")
    y = np.load(tmp_path / "aug" / "obs_train_augmented.npy", mmap_mode="r")
    assert x.shape == (n_real + n_syn, 4, 3, data.n_channels) and y.shape == (n_real + n_syn, 24, 20)
    assert np.isfinite(y).all()
    rows = list(csv.DictReader(open(tmp_path / "aug" / "augmented_rows.csv")))
    assert [r["source"] for r in rows].count("synthetic") == n_syn
    first = data.ids("train")[0]
    np.testing.assert_array_equal(x[0], np.transpose(data.inputs(first), (1, 2, 0)))
    syn = rows[n_real]
    day, k = int(syn["day_id"]), int(syn["sample"])
    stored = np.load(synth / f"day_{day:06d}_sample_{k:02d}.Y_hr_syn.npy")[0]
    valid = data.valid_mask
    np.testing.assert_array_equal(y[n_real][valid], stored[valid])
    # outside the valid mask: the normalized value of 0 mm/day
    np.testing.assert_allclose(data.normalization.to_mm(y[n_real])[~valid], 0.0)
    weights = np.load(tmp_path / "aug" / "sample_weights.npy")
    assert weights[:n_real].tolist() == [1.0] * n_real and set(weights[n_real:].tolist()) == {0.5}


def test_round_trip_normalized_mm_normalized(trained, synth, tmp_path):
    data = PreparedData(trained.data.data_root)
    run_augment(data.root, synth, tmp_path / "aug", per_day=1, progress=False)
    y = np.load(tmp_path / "aug" / "obs_train_augmented.npy")
    mm = data.normalization.to_mm(y)
    back = data.normalization.to_z(mm)
    wet = mm > 1e-3  # an exactly dry pixel maps to the dry value, not back to its round-off
    np.testing.assert_allclose(back[wet], y[wet], rtol=1e-4, atol=1e-4)


def test_refuses_samples_of_non_training_days(trained, tmp_path):
    out = tmp_path / "val_synth"
    run_sample(trained, SampleOptions(K=1, days="split:val"), PERMISSIVE, out_dir=out, progress=False)
    with pytest.raises(InputError, match="outside the train split"):
        run_augment(trained.data.data_root, out, tmp_path / "aug", progress=False)
    assert not (tmp_path / "aug").exists()


def test_option_a_dataset_mixes_on_the_fly(trained, synth):
    ds = AugmentedDataset(trained.data.data_root, synth, per_heavy_day=1, seed=0)
    data = ds.data
    heavy_with_samples = len(ds.pool)
    assert len(ds) == len(data.ids("train")) + heavy_with_samples
    item = ds[len(ds) - 1]
    assert item["synthetic"] and item["target"].shape == (1, 24, 20) and item["mask"].dtype == torch.bool
    first = list(ds.chosen)
    ds.set_epoch(1)
    again = AugmentedDataset(trained.data.data_root, synth, per_heavy_day=1, seed=0)
    again.set_epoch(1)
    assert ds.chosen == again.chosen
    assert first != ds.chosen or all(len(v) == 1 for v in ds.pool.values())
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["inputs"].shape[0] == 4


def test_augment_cli(trained, synth, tmp_path, capsys):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(trained.to_dict()))
    assert (
        main(["augment", "--config", str(config), "--out", str(tmp_path / "a"), "--source", str(synth), "--quiet"]) == 0
    )
    assert "real" in capsys.readouterr().out
    assert main(["augment", "--config", str(config), "--out", str(tmp_path / "a"), "--source", str(synth)]) == 2
    assert "already exists" in capsys.readouterr().err
