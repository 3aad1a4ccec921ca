"""`sampling.preserve_mass`: hand-computed rescaling, block totals equal to the real day's, the block size read from
the prepared metadata, and `sample` writing what it rescaled."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr

from precip_cvae.conserve import cell_factor, conserve
from precip_cvae.data.coarsen import block_mean
from precip_cvae.data.dataset import PreparedData
from precip_cvae.errors import InputError
from precip_cvae.sample import SampleOptions, run_sample
from tests.cases import PERMISSIVE

ALL = np.ones((2, 2), bool)


def test_domain_scales_each_sample_to_the_real_land_total_by_hand():
    land = np.array([[True, True], [False, True]])  # (1, 0) is sea: scaled, never summed
    real = np.array([[1.0, 1.0], [9.0, 9.0]])  # land total 1 + 1 + 9 = 11
    drawn = np.array([[[1.0, 3.0], [5.0, 7.0]]], np.float32)  # land total 11
    scaled, info = conserve(2 * drawn, real, ALL, land, "domain")  # twice too wet
    assert info["drawn_mass_ratio"] == [pytest.approx(2.0)]
    np.testing.assert_allclose(scaled[0], drawn[0], rtol=1e-6)  # every valid pixel halved, the sea one too
    assert scaled.dtype == np.float32
    # a pixel without data counts on neither side: over (0, 0) and (0, 1) the real day has 2, the sample 4
    real[1, 1] = np.nan
    scaled, info = conserve(drawn, real, ALL, land, "domain")
    assert info["drawn_mass_ratio"] == [pytest.approx(2.0)]
    np.testing.assert_allclose(scaled[0], drawn[0] / 2, rtol=1e-6)
    # a dry sample cannot be rescaled: left as drawn, its ratio 0 says so (the gate rejects it as low_mass)
    scaled, info = conserve(np.zeros((1, 2, 2), np.float32), real, ALL, land, "domain")
    assert info["drawn_mass_ratio"] == [0.0] and (scaled == 0).all()


def test_none_returns_the_draws_and_their_ratio():
    real = np.full((2, 2), 1.0)
    samples = np.array([[[1.0, 1.0], [1.0, 3.0]]], np.float32)
    scaled, info = conserve(samples, real, ALL, ALL, "none")
    np.testing.assert_array_equal(scaled, samples)
    assert info["drawn_mass_ratio"] == [pytest.approx(1.5)] and info["unscaled_cells"] == [0]
    with pytest.raises(InputError, match="preserve_mass.*'blocks'"):
        conserve(samples, real, ALL, ALL, "blocks")


def test_cells_makes_the_block_means_those_of_the_real_day():
    rng = np.random.default_rng(0)
    H, W, f = 7, 5, 3  # partial edge blocks in both directions
    valid = np.ones((H, W), bool)
    valid[0, 0] = False  # a pixel without data in a block
    real = np.where(valid, rng.gamma(0.8, 6.0, (H, W)), np.nan)
    real[:3, 3:] = 0.0  # a dry real block
    samples = np.where(valid, rng.gamma(0.8, 9.0, (2, H, W)), np.nan)
    samples[1, 3:6, :3] = 0.0  # a dry sample block where the real day rains: left as drawn
    samples[:, 2, 1] = 0.0  # a dry pixel stays dry
    scaled, info = conserve(samples, real, valid, valid, "cells", f)
    assert np.isnan(scaled[:, 0, 0]).all() and (scaled[:, 2, 1] == 0).all()
    target = block_mean(real, f)
    for k in range(2):
        got = block_mean(scaled[k].astype(np.float64), f)
        wet_sample = block_mean(np.nan_to_num(samples[k]), f) > 0
        np.testing.assert_allclose(got[wet_sample], target[wet_sample], rtol=1e-5)
    np.testing.assert_array_equal(scaled[1, 3:6, :3], 0.0)
    assert info["unscaled_cells"] == [0, 1]
    # within a block the pattern is kept: one factor per block
    block = scaled[0, 3:6, :3] / samples[0, 3:6, :3]
    np.testing.assert_allclose(block, block.flat[0], rtol=1e-5)


def test_cell_factor_reads_the_recorded_coarsening():
    recorded = {"operator": "block_mean", "factor": 5}
    data = SimpleNamespace(variables=[{"name": "pr", "derived_from_target": recorded}], root=Path("."))
    assert cell_factor(data) == 5
    data = SimpleNamespace(variables=[{"name": "psl"}], root=Path("/somewhere"))
    with pytest.raises(InputError, match="variables.json.*no predictor block-averaged"):
        cell_factor(data)


def test_sample_rescales_what_it_writes_and_records_the_draws(trained, tmp_path):
    options = SampleOptions(mode="posterior", K=2, days="heavy_only", seed=3, preserve_mass="domain")
    summary = run_sample(trained, options, PERMISSIVE, out_dir=tmp_path / "kept", progress=False)
    plain = run_sample(trained, SampleOptions(mode="posterior", K=2, days="heavy_only", seed=3), PERMISSIVE,
                       out_dir=tmp_path / "plain", progress=False)  # fmt: skip
    data = PreparedData(trained.data.data_root)
    manifest = json.loads((tmp_path / "kept" / "manifest.json").read_text())
    drawn = [r["drawn_mass_ratio"] for r in manifest["samples"]]
    # the same draws: the plain store's mass ratios are the rescaled store's drawn ratios
    plain_records = json.loads((tmp_path / "plain" / "manifest.json").read_text())["samples"]
    np.testing.assert_allclose(drawn, [r["mass_ratio"] for r in plain_records], rtol=1e-6)
    accepted_drawn = [r["drawn_mass_ratio"] for r in manifest["samples"] if r["accepted"]]
    assert summary["drawn_mass_ratio"] == pytest.approx(np.mean(accepted_drawn))
    assert summary["accepted_mass_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert plain["drawn_mass_ratio"] == pytest.approx(plain["accepted_mass_ratio"], rel=0.5)
    kept = xr.open_dataset(tmp_path / "kept" / "samples.nc")
    assert kept.attrs["preserve_mass"] == "domain"
    first = manifest["samples"][0]
    day, k = first["day"], first["sample"]
    z = np.load(tmp_path / "kept" / f"day_{day:06d}_sample_{k:02d}.Y_hr_syn.npy")[0]
    mm = data.normalization.to_mm(z)
    np.testing.assert_allclose(mm[data.valid_mask], kept["pr"].values[k, 0][data.valid_mask], rtol=1e-4, atol=1e-4)
    real = data.target_mm(day)
    use = data.land_mask & np.isfinite(real)
    assert mm[use].sum() == pytest.approx(real[use].sum(), rel=1e-4)
    with pytest.raises(InputError, match="variables.json"):  # the benchmark's predictors are not the target coarsened
        run_sample(trained, SampleOptions(preserve_mass="cells"), PERMISSIVE, out_dir=tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


def test_cells_pairs_a_sample_with_the_real_day_s_coarse_input(tmp_path):
    """On predictors that `prepare --coarsen` made from the target, a sample rescaled with ``cells`` re-derives the
    real day's prepared X (what makes augment's pair (real X, synthetic Y) consistent)."""
    from precip_cvae.data.netcdf import read_netcdf
    from precip_cvae.data.prepare import PrepareOptions, prepare
    from precip_cvae.downstream.experiment import Examples
    from tests.cases import make_case, write_netcdf_case

    case = make_case(n_days=60, hr=(9, 7))  # 9 x 7 in blocks of 2: partial edge blocks
    paths = write_netcdf_case(tmp_path / "nc", case)
    source = read_netcdf([paths["highres"]], paths["highres"], "2000-01-01:2000-02-09", "2000-02-10:2000-02-29",
                         statics=[paths["statics"]], coarsen=2)  # fmt: skip
    prepare(source, tmp_path, PrepareOptions(progress=False))
    data = PreparedData(tmp_path / "data")
    assert cell_factor(data) == 2
    examples = Examples(data, None)
    rng = np.random.default_rng(1)
    for day in data.ids("train")[:5]:
        real = data.target_mm(day)
        drawn = np.where(data.valid_mask, rng.gamma(0.7, 8.0, (1, *real.shape)), np.nan).astype(np.float32)
        scaled, _ = conserve(drawn, real, data.valid_mask, data.land_mask, "cells", 2)
        np.testing.assert_allclose(examples.derive_inputs(scaled[0]), data.inputs(day), atol=1e-4)
        assert np.abs(examples.derive_inputs(drawn[0]) - data.inputs(day)).max() > 0.1  # as drawn: not a pair


def test_a_bad_mode_is_named_before_anything_is_drawn(trained, tmp_path):
    from precip_cvae.config import load_config

    with pytest.raises(InputError, match="sampling.preserve_mass"):
        load_config(None, ["sampling.preserve_mass=cell"])
    with pytest.raises(InputError, match="--preserve-mass.*'cell'"):
        run_sample(trained, SampleOptions(preserve_mass="cell"), PERMISSIVE, out_dir=tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()
