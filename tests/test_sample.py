"""`sample`: files and names, samples.nc, non-negativity, reproducibility, posterior vs prior, bad day lists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from precip_cvae.data.dataset import PreparedData
from precip_cvae.errors import InputError
from precip_cvae.quality import GateConfig
from precip_cvae.sample import SampleOptions, run_sample, select_days
from tests.cases import PERMISSIVE


def test_files_names_and_netcdf(trained, tmp_path):
    out = tmp_path / "synth"
    summary = run_sample(trained, SampleOptions(mode="prior", K=3, days="heavy_only", seed=1), PERMISSIVE,
                         out_dir=out, progress=False)  # fmt: skip
    data = PreparedData(trained.data.data_root)
    heavy = [i for i in data.ids("train") if data.is_heavy(i)]
    assert summary["days"] == len(heavy) and summary["accepted"] == 3 * len(heavy)
    day = heavy[0]
    y = np.load(out / f"day_{day:06d}_sample_02.Y_hr_syn.npy")
    x = np.load(out / f"day_{day:06d}_sample_02.X_lr_ref.npy")
    assert y.shape == (1, 24, 20) and x.shape == (data.n_channels, 4, 3)
    np.testing.assert_array_equal(x, data.inputs(day))
    assert np.isnan(y[0][~data.valid_mask]).all() and np.isfinite(y[0][data.valid_mask]).all()
    ds = xr.open_dataset(out / "samples.nc")
    assert ds["pr"].dims == ("realization", "time", "y", "x") and ds["pr"].attrs["units"] == "mm/day"
    pr = ds["pr"].values
    assert (pr[:, :, data.valid_mask] >= 0).all() and np.isfinite(pr[:, :, data.valid_mask]).all()
    assert np.isnan(pr[:, :, ~data.valid_mask]).all()
    assert list(ds["day_id"].values) == heavy
    assert str(ds["time"].values[0])[:10] == data.date(heavy[0])
    mm = data.normalization.to_mm(y[0])
    np.testing.assert_allclose(pr[2, 0][data.valid_mask], mm[data.valid_mask], rtol=1e-5, atol=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["mode"] == "prior" and manifest["options"]["seed"] == 1
    assert len(manifest["samples"]) == 3 * len(heavy)
    assert {"mass_ratio", "wet_fraction", "peak_mm_per_day", "reasons"} <= set(manifest["samples"][0])


def test_rejected_samples_are_not_exported(trained, tmp_path):
    strict = GateConfig(min_mass_ratio=1e9)  # nothing passes
    summary = run_sample(trained, SampleOptions(K=2, days="split:val", keep_rejected=True), strict,
                         out_dir=tmp_path / "s", progress=False)  # fmt: skip
    assert summary["accepted"] == 0 and summary["reasons"]["low_mass"] == summary["samples"]
    assert not list((tmp_path / "s").glob("*.Y_hr_syn.npy"))
    assert len(list((tmp_path / "s" / "rejected").glob("*.Y_hr_syn.npy"))) == summary["samples"]


def test_same_seed_same_samples(trained, tmp_path):
    opts = SampleOptions(mode="prior", K=2, days="split:val", seed=7, batch_size=5)
    run_sample(trained, opts, PERMISSIVE, out_dir=tmp_path / "a", progress=False)
    run_sample(trained, opts, PERMISSIVE, out_dir=tmp_path / "b", progress=False)
    a = xr.open_dataset(tmp_path / "a" / "samples.nc")["pr"].values
    b = xr.open_dataset(tmp_path / "b" / "samples.nc")["pr"].values
    np.testing.assert_array_equal(a, b)
    files = sorted(p.name for p in (tmp_path / "a").glob("*.npy"))  # byte-identical arrays
    assert files and files == sorted(p.name for p in (tmp_path / "b").glob("*.npy"))
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # the manifest names what the samples came from by content: the checkpoint's bytes and the dataset's metadata
    import hashlib

    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    checkpoint = Path(trained.data.outputs_root) / "checkpoints" / "cvae_best.pt"
    assert manifest["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert len(manifest["metadata_sha256"]) == 64
    from precip_cvae.data.dataset import REPORT_FILES
    from precip_cvae.fileio import content_sha256

    meta = Path(trained.data.data_root) / "metadata"
    assert content_sha256(meta, exclude=REPORT_FILES) == manifest["metadata_sha256"]
    copy = tmp_path / "meta"
    copy.mkdir()
    for f in meta.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert content_sha256(copy, exclude=REPORT_FILES) == manifest["metadata_sha256"]
    (copy / "summary.txt").write_text("prepared dataset: elsewhere")  # the report: not the data
    assert content_sha256(copy, exclude=REPORT_FILES) == manifest["metadata_sha256"]
    (copy / "thresholds.json").write_text((copy / "thresholds.json").read_text() + " ")  # one byte more
    assert content_sha256(copy, exclude=REPORT_FILES) != manifest["metadata_sha256"]


def test_posterior_samples_are_closer_to_their_day_than_prior_samples(trained, tmp_path):
    data = PreparedData(trained.data.data_root)
    errors = {}
    for mode in ("posterior", "prior"):
        out = tmp_path / mode
        last = Path(trained.data.outputs_root) / "checkpoints" / "cvae_last.pt"
        run_sample(trained, SampleOptions(mode=mode, K=4, days="split:train", seed=3), PERMISSIVE, out_dir=out,
                   checkpoint=last, progress=False)  # fmt: skip
        ds = xr.open_dataset(out / "samples.nc")
        real = np.stack([data.target_mm(int(d)) for d in ds["day_id"].values])
        errors[mode] = float(np.nanmean(np.abs(ds["pr"].values - real[None])))
    assert errors["posterior"] < errors["prior"], errors


def test_day_lists(trained, tmp_path):
    data = PreparedData(trained.data.data_root)
    ids = tmp_path / "ids.txt"
    ids.write_text("# two days\n3\n000010\n")
    assert select_days(data, f"file:{ids}") == [3, 10]
    ids.write_text("3\n999999\nabc\n")
    with pytest.raises(InputError, match="unknown day ids: 999999, abc"):
        select_days(data, f"file:{ids}")
    assert select_days(data, "split:test") == data.ids("test")
    with pytest.raises(InputError, match="--days"):
        select_days(data, "everything")


def test_sample_cli_acceptance_command(trained, tmp_path):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(trained.to_dict()))
    argv = [sys.executable, "-m", "precip_cvae", "sample", "--config", str(config), "--mode", "prior", "--K", "4",
            "--days", "heavy_only", "--quiet"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "accepted" in result.stdout
    synth = Path(trained.data.outputs_root) / "synth"
    assert (synth / "samples.nc").is_file() and (synth / "manifest.json").is_file()
