"""The synthetic benchmark: determinism, physics statistics, the oracle, and both writers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from precip_cvae.data.normalize import target_to_mm_per_day
from precip_cvae.data.synthetic import (
    HEAVY_FACTOR,
    STATE_NAMES,
    SyntheticBenchmark,
    SynthOptions,
    heavy_days,
    run_synth,
    write_netcdf,
    write_srdrn,
)
from precip_cvae.errors import InputError

SMALL = SynthOptions(days=120, hr_shape=(48, 40), lr_shape=(8, 6), oracle_members=4, seed=3)
# Integer block sizes (6 x 7) so a test can block-average with a reshape.
BLOCKY = SynthOptions(days=600, hr_shape=(48, 42), lr_shape=(8, 6), oracle_members=2, seed=5)
STATS = SynthOptions(days=1000, hr_shape=(64, 56), lr_shape=(8, 7), seed=0)


@pytest.fixture(scope="module")
def small() -> SyntheticBenchmark:
    return SyntheticBenchmark(SMALL)


@pytest.fixture(scope="module")
def stats() -> tuple[SyntheticBenchmark, np.ndarray]:
    """A moderate grid over 1000 days and its land pixel values (days, land pixels) in mm/day."""
    bench = SyntheticBenchmark(STATS)
    return bench, bench.target(0, bench.n_days)[:, bench.land_mask]


def block_mean(fields: np.ndarray, h: int, w: int) -> np.ndarray:
    n, H, W = fields.shape
    return fields.reshape(n, h, H // h, w, W // w).mean(axis=(2, 4))


def rapsd(field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of a 2-D field (Hann window); frequencies in cycles/pixel."""
    H, W = field.shape
    f = (field - field.mean()) * np.outer(np.hanning(H), np.hanning(W))
    power = np.abs(np.fft.fft2(f)) ** 2
    k = np.hypot(np.fft.fftfreq(H)[:, None], np.fft.fftfreq(W)[None, :])
    n = min(H, W)
    ring = np.round(k * n).astype(int).ravel()
    psd = np.bincount(ring, power.ravel()) / np.maximum(np.bincount(ring), 1)
    return np.arange(1, n // 2) / n, psd[1 : n // 2]


def loglog_slope(freq: np.ndarray, psd: np.ndarray, lo: float = 0.05, hi: float = 0.25) -> float:
    sel = (freq >= lo) & (freq <= hi)
    return float(np.polyfit(np.log(freq[sel]), np.log(psd[sel]), 1)[0])


# ---------------------------------------------------------------------- options, grids, shapes
@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"days": 1}, "days"),
        ({"days": 10.5}, "days"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"days": 4, "test_fraction": 0.01}, "test_fraction"),
        ({"hr_shape": (48,)}, "hr_shape"),
        ({"hr_shape": (4, 40)}, "hr_shape"),
        ({"lr_shape": (0, 6)}, "lr_shape"),
        ({"lr_shape": (60, 6)}, "lr_shape"),
        ({"channels": 0}, "channels"),
        ({"oracle_members": 0}, "oracle_members"),
        ({"seed": -1}, "seed"),
        ({"start_date": "not a date"}, "start_date"),
    ],
)
def test_bad_options_raise_input_error_naming_the_option(change: dict, name: str):
    with pytest.raises(InputError, match=name):
        SyntheticBenchmark(replace(SMALL, **change))


def test_bad_ranges_and_members(small: SyntheticBenchmark):
    with pytest.raises(InputError):
        small.target(5, 3)
    with pytest.raises(InputError):
        small.predictors(0, small.n_days + 1)
    with pytest.raises(InputError, match="member"):
        small.target(0, 2, member=-1)


def test_split_dates_and_grids(small: SyntheticBenchmark):
    assert small.n_days == 120 and small.n_test == round(120 * 0.2) == 24 and small.n_train == 96
    assert small.dates.dtype == np.dtype("datetime64[D]") and small.dates.shape == (120,)
    assert small.dates[0] == np.datetime64("1981-01-01")
    assert np.all(np.diff(small.dates).astype(int) == 1)
    for arr, n in ((small.hr_lat, 48), (small.hr_lon, 40), (small.lr_lat, 8), (small.lr_lon, 6)):
        assert arr.shape == (n,) and arr.dtype == np.float64 and np.all(np.diff(arr) > 0)
    np.testing.assert_allclose(np.diff(small.hr_lat), 0.04)
    np.testing.assert_allclose(np.diff(small.hr_lon), 0.04)
    # lr cell centres are the centres of the hr blocks; 40 / 6 is not an integer.
    np.testing.assert_allclose(small.lr_lat, small.hr_lat.reshape(8, 6).mean(axis=1))
    west_edge = small.hr_lon[0] - 0.02
    np.testing.assert_allclose(small.lr_lon, west_edge + (np.arange(6) + 0.5) * (40 / 6) * 0.04)


def test_terrain(small: SyntheticBenchmark, stats):
    for bench in (small, stats[0]):
        assert bench.land_mask.dtype == bool and bench.land_mask.shape == bench.options.hr_shape
        assert 0.65 <= bench.land_mask.mean() <= 0.85
        assert bench.elevation_m.dtype == np.float32
        assert np.all(bench.elevation_m[~bench.land_mask] == 0) and np.all(bench.elevation_m >= 0)
        assert 2000 <= bench.elevation_m.max() <= 3000
        # The sea lies along the west side.
        assert (~bench.land_mask[:, 0]).mean() > 0.9 and bench.land_mask[:, -1].all()


def test_shapes_dtypes_units(small: SyntheticBenchmark):
    x, y, o, mu = (
        small.predictors(0, 5),
        small.target(0, 5),
        small.oracle(0, 5),
        small.expected_intensity(0, 5),
    )
    assert x.shape == (5, 6, 8, 6) and x.dtype == np.float32
    assert y.shape == (5, 48, 40) and y.dtype == np.float32
    assert o.shape == (5, 4, 48, 40) and o.dtype == np.float32
    assert mu.shape == (5, 48, 40) and mu.dtype == np.float32 and np.all(mu > 0)
    assert small.variables == ["pr_coarse", "hus850", "ua850", "va850", "psl", "ta850"]
    assert small.units == ["mm/day", "kg kg-1", "m s-1", "m s-1", "Pa", "K"]
    assert small.state.shape == (120, len(STATE_NAMES)) and small.state_names == list(STATE_NAMES)


def test_predictor_magnitudes_are_physical(stats):
    x = stats[0].predictors(0, 365)
    assert np.isfinite(x).all()
    pr, hus, ua, va, psl, ta = (x[:, c] for c in range(6))
    assert pr.min() >= 0 and 0.5 < pr.mean() < 10
    assert 0 < hus.min() and hus.max() < 0.025 and 0.002 < hus.mean() < 0.012
    assert np.abs(ua).max() < 60 and np.abs(va).max() < 60 and 2 < ua.mean() < 8
    assert 93000 < psl.min() and psl.max() < 107000 and 100000 < psl.mean() < 102500
    assert 250 < ta.min() and ta.max() < 305


def test_channel_count(small: SyntheticBenchmark):
    two = SyntheticBenchmark(replace(SMALL, channels=2))
    assert two.variables == ["pr_coarse", "hus850"] and two.predictors(0, 3).shape == (3, 2, 8, 6)
    np.testing.assert_array_equal(two.predictors(0, 3), small.predictors(0, 3)[:, :2])
    nine = SyntheticBenchmark(replace(SMALL, channels=9))
    assert nine.variables[6:] == ["extra_1", "extra_2", "extra_3"] and nine.units[6:] == ["1"] * 3
    x = nine.predictors(0, 50)
    assert np.isfinite(x).all() and x.shape == (50, 9, 8, 6)
    assert not np.allclose(x[:, 6], x[:, 7])


# ---------------------------------------------------------------------- determinism
def test_determinism_chunking_and_seed(small: SyntheticBenchmark):
    again = SyntheticBenchmark(SMALL)
    for fn in ("target", "predictors", "expected_intensity"):
        whole = getattr(small, fn)(0, 70)
        np.testing.assert_array_equal(whole, getattr(again, fn)(0, 70))
        parts = np.concatenate([getattr(small, fn)(0, 4), getattr(small, fn)(4, 41), getattr(small, fn)(41, 70)])
        np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(small.oracle(10, 13), np.concatenate([small.oracle(10, 11), small.oracle(11, 13)]))
    np.testing.assert_array_equal(small.land_mask, again.land_mask)
    other = SyntheticBenchmark(replace(SMALL, seed=4))
    assert not np.array_equal(other.land_mask, small.land_mask)
    assert not np.allclose(other.predictors(0, 5), small.predictors(0, 5))
    assert not np.array_equal(np.nan_to_num(other.target(0, 5)), np.nan_to_num(small.target(0, 5)))


def test_longer_record_extends_a_shorter_one(small: SyntheticBenchmark):
    longer = SyntheticBenchmark(replace(SMALL, days=300))
    np.testing.assert_array_equal(longer.state[:120], small.state)
    np.testing.assert_array_equal(longer.target(100, 120), small.target(100, 120))


# ---------------------------------------------------------------------- target values
def test_sea_is_nan_land_is_finite_and_non_negative(small: SyntheticBenchmark):
    for y in (small.target(0, 60), small.target(0, 10, member=3), small.oracle(50, 53).reshape(-1, 48, 40)):
        assert np.isnan(y[:, ~small.land_mask]).all()
        land = y[:, small.land_mask]
        assert np.isfinite(land).all() and land.min() >= 0


def test_dry_fraction_and_heavy_tail(stats):
    bench, v = stats
    dry = (v < 0.1).mean(axis=1)
    assert 0.3 <= np.median(dry) <= 0.7
    assert dry.min() < 0.2 and dry.max() > 0.8  # wet fraction depends on the state
    wet = v[v >= 0.1]
    assert v.max() >= 10 * np.median(wet)
    assert 1 < np.median(wet) < 10 and 5 < np.quantile(v, 0.99) < 60


def test_heavy_days(stats):
    bench, v = stats
    land_mean = v.mean(axis=1)
    heavy = heavy_days(land_mean)
    # Criterion of the module docstring: land mean > HEAVY_FACTOR x P90 of the daily land means.
    assert HEAVY_FACTOR == 2.0
    np.testing.assert_array_equal(heavy, land_mean > 2.0 * np.quantile(land_mean, 0.9))
    assert 0.02 <= heavy.mean() <= 0.05
    assert land_mean[heavy].min() > 1.2 * np.quantile(land_mean, 0.95)
    # They are the storm bursts of the state.
    assert (bench.state[heavy, STATE_NAMES.index("burst")] > 1).mean() >= 0.6


def test_autocorrelation_and_seasonal_cycle(stats):
    bench, v = stats
    land_mean = v.mean(axis=1).astype(np.float64)
    assert np.corrcoef(land_mean[:-1], land_mean[1:])[0, 1] > 0.2
    ta = bench.predictors(0, bench.n_days)[:, 5].mean(axis=(1, 2)).astype(np.float64)
    doy = (bench.dates - bench.dates.astype("datetime64[Y]")).astype(int)
    angle = 2 * np.pi * doy / 365.25
    design = np.column_stack([np.ones_like(angle), np.cos(angle), np.sin(angle)])
    fit = design @ np.linalg.lstsq(design, ta, rcond=None)[0]
    assert np.corrcoef(fit, ta)[0, 1] > 0.7
    assert np.argmin(fit[:365]) < 60 or np.argmin(fit[:365]) > 330  # coldest in winter (start_date 1 Jan)


def test_power_law_spectrum(stats):
    bench = stats[0]
    g = bench.small_scale_fields(0, 30)
    assert g.shape == (30, 2, 64, 56) and abs(g.std() - 1) < 0.15
    slope_mask = loglog_slope(*_mean_rapsd(g[:, 0]))
    slope_int = loglog_slope(*_mean_rapsd(g[:, 1]))
    assert -3.4 <= slope_mask <= -2.5 and -3.0 <= slope_int <= -2.1
    y = bench.target(0, 200)
    land = bench.land_mask
    wet_days = np.flatnonzero((y[:, land] >= 0.1).mean(axis=1) > 0.7)[:20]
    assert wet_days.size >= 5
    fields = np.where(land, y[wet_days], np.nanmean(y[wet_days][:, land], axis=1)[:, None, None])
    assert -4.0 <= loglog_slope(*_mean_rapsd(fields)) <= -1.5


def _mean_rapsd(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    spectra = [rapsd(f.astype(np.float64)) for f in fields]
    return spectra[0][0], np.mean([s for _, s in spectra], axis=0)


# ---------------------------------------------------------------------- the oracle
def test_oracle_members_are_redraws_of_the_same_state(small: SyntheticBenchmark):
    day = int(np.argmax(small.expected_intensity(0, 60)[:, small.land_mask].mean(axis=1)))  # a wet day
    o = small.oracle(day, day + 3)
    truth = small.target(day, day + 3)
    land = small.land_mask
    for k in range(4):
        np.testing.assert_array_equal(o[:, k], small.target(day, day + 3, member=k + 1))
        assert not np.array_equal(o[:, k][:, land], truth[:, land])
        for j in range(k):
            assert not np.array_equal(o[:, k][:, land], o[:, j][:, land])
    # The same expected intensity: the ensemble mean converges to mu.
    big = SyntheticBenchmark(replace(small.options, oracle_members=300))
    ens = big.oracle(day, day + 2)[:, :, land].mean(axis=1)
    mu = big.expected_intensity(day, day + 2)[:, land]
    np.testing.assert_allclose(ens.mean(axis=1), mu.mean(axis=1), rtol=0.05)
    assert np.corrcoef(ens.ravel(), mu.ravel())[0, 1] > 0.9


def test_predictors_carry_no_information_on_the_small_scale_draw():
    bench = SyntheticBenchmark(BLOCKY)
    x = bench.predictors(0, bench.n_days)
    bench.target(0, 50, member=2)
    np.testing.assert_array_equal(bench.predictors(0, bench.n_days), x)  # nothing depends on what was drawn
    land = bench.land_mask
    mu = bench.expected_intensity(0, bench.n_days)
    y = bench.target(0, bench.n_days)
    residual = block_mean(np.where(land, y - mu, 0.0), 8, 6)
    pr_coarse = x[:, 0]
    # E[residual | state] = 0 and the predictor noise is independent: no correlation, up to sampling
    # noise (large here: residuals are heavy-tailed and larger on wet days).
    assert abs(np.corrcoef(pr_coarse.ravel(), residual.ravel())[0, 1]) < 0.15
    # The relative residual of mostly-land cells is far less heteroscedastic: a tight check.
    mostly_land = block_mean(np.broadcast_to(land, y.shape).astype(np.float64), 8, 6) > 0.5
    land_mu = np.maximum(block_mean(np.where(land, mu, 0.0), 8, 6), 1e-12)  # all-sea cells are masked out
    relative = block_mean(np.where(land, y, 0.0), 8, 6) / land_mu - 1
    assert abs(np.corrcoef(pr_coarse[mostly_land], relative[mostly_land])[0, 1]) < 0.05
    # ...while they do carry the large-scale signal.
    assert np.corrcoef(pr_coarse.ravel(), block_mean(mu, 8, 6).ravel())[0, 1] > 0.9
    assert np.corrcoef(pr_coarse.ravel(), block_mean(np.where(land, y, mu), 8, 6).ravel())[0, 1] > 0.5


# ---------------------------------------------------------------------- writers
def test_write_srdrn_round_trip(tmp_path: Path):
    opts = SynthOptions(days=60, test_fraction=0.25, hr_shape=(48, 40), lr_shape=(8, 6), oracle_members=3)
    bench = SyntheticBenchmark(opts)
    out = tmp_path / "srdrn"
    out.mkdir()
    write_srdrn(bench, out, chunk_days=7, progress=False)
    load = lambda name: np.load(out / name, allow_pickle=False)  # noqa: E731
    xtr, xte = load("predictors_train_mean_std_separate.npy"), load("predictors_test_mean_std_separate.npy")
    ytr, yte = load("obs_train_mean_std_single.npy"), load("obs_test_mean_std_single.npy")
    mean, std = load("ERA5_mean_train.npy"), load("ERA5_std_train.npy")
    assert xtr.shape == (45, 8, 6, 6) and xte.shape == (15, 8, 6, 6) and xtr.dtype == np.float32
    assert ytr.shape == (45, 48, 40) and yte.shape == (15, 48, 40) and ytr.dtype == np.float32
    assert mean.shape == std.shape == (48, 40) and mean.dtype == std.dtype == np.float32
    np.testing.assert_allclose(xtr.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(xtr.std(axis=(0, 1, 2)), 1, atol=1e-3)
    # Test predictors use the training statistics.
    raw = bench.predictors(0, 60).astype(np.float64)
    mu_c, sd_c = raw[:45].mean(axis=(0, 2, 3)), raw[:45].std(axis=(0, 2, 3))
    expect = np.moveaxis((raw[45:] - mu_c[:, None, None]) / sd_c[:, None, None], 1, -1)
    np.testing.assert_allclose(xte, expect, atol=1e-4)

    land = bench.land_mask
    for z, lo, hi in ((ytr, 0, 45), (yte, 45, 60)):
        truth = bench.target(lo, hi)
        back = target_to_mm_per_day(z, mean, std)
        np.testing.assert_allclose(back[:, land], truth[:, land], rtol=1e-4, atol=1e-4)
        assert np.all(z[:, ~land] == 0)
    assert np.all(mean[~land] == 0) and np.all(std[~land] == 1)
    logs = np.log1p(bench.target(0, 45)[:, land].astype(np.float64))
    np.testing.assert_allclose(mean[land], logs.mean(axis=0), rtol=1e-5, atol=1e-6)

    np.testing.assert_array_equal(load("land_mask.npy"), land.astype(np.uint8))
    assert load("land_mask.npy").dtype == np.uint8
    np.testing.assert_array_equal(load("elevation.npy"), bench.elevation_m)
    np.testing.assert_array_equal(load("high_res_lat.npy"), bench.hr_lat)
    np.testing.assert_array_equal(load("low_res_lon.npy"), bench.lr_lon)
    variables = load("variables.npy")
    assert variables.dtype.kind == "U" and list(variables) == bench.variables
    np.testing.assert_array_equal(load("dates_train.npy"), bench.dates[:45])
    assert load("dates_test.npy").dtype == np.dtype("datetime64[D]")
    meta = json.loads((out / "synthetic_benchmark.json").read_text())
    assert meta["n_train"] == 45 and meta["n_test"] == 15 and meta["units"] == bench.units
    assert meta["options"]["hr_shape"] == [48, 40] and meta["description"]

    oracle = load("oracle/oracle_test.npy")
    assert oracle.shape == (15, 3, 48, 40) and oracle.dtype == np.float32
    np.testing.assert_array_equal(oracle, bench.oracle(45, 60))
    assert "CRPS" in (out / "oracle" / "README.md").read_text()

    # Chunking of the writer does not change a byte.
    again = tmp_path / "again"
    again.mkdir()
    write_srdrn(bench, again, chunk_days=128, progress=False)
    for name in (
        "predictors_test_mean_std_separate.npy",
        "obs_train_mean_std_single.npy",
        "ERA5_std_train.npy",
    ):
        assert (out / name).read_bytes() == (again / name).read_bytes()


def test_write_netcdf(tmp_path: Path):
    opts = SynthOptions(days=30, hr_shape=(48, 40), lr_shape=(8, 6), oracle_members=2, start_date="2001-03-05")
    bench = SyntheticBenchmark(opts)
    write_netcdf(bench, tmp_path, chunk_days=11, progress=False)
    land = bench.land_mask
    with xr.open_dataset(tmp_path / "highres.nc") as hi:
        assert hi.attrs["Conventions"] == "CF-1.8"
        assert hi["pr"].attrs["units"] == "mm/day" and hi["pr"].dims == ("time", "lat", "lon")
        np.testing.assert_array_equal(hi["pr"].values, bench.target(0, 30))
        np.testing.assert_array_equal(hi["time"].values.astype("datetime64[D]"), bench.dates)
        assert hi["lat"].attrs["units"] == "degrees_north" and hi["lon"].attrs["standard_name"] == "longitude"
        np.testing.assert_allclose(hi["lat"].values, bench.hr_lat)
        assert np.isnan(hi["pr"].values[:, ~land]).all()
    with xr.open_dataset(tmp_path / "lowres.nc") as lo:
        x = bench.predictors(0, 30)
        for c, (name, unit) in enumerate(zip(bench.variables, bench.units, strict=True)):
            assert lo[name].attrs["units"] == unit and lo[name].dtype == np.float32
            np.testing.assert_array_equal(lo[name].values, x[:, c])
        np.testing.assert_allclose(lo["lon"].values, bench.lr_lon)
    with xr.open_dataset(tmp_path / "statics.nc") as st:
        np.testing.assert_array_equal(st["land_mask"].values, land.astype(np.int8))
        assert st["elevation"].attrs["units"] == "m"
        np.testing.assert_array_equal(st["elevation"].values, bench.elevation_m)
    assert json.loads((tmp_path / "synthetic_benchmark.json").read_text())["format"] == "netcdf"
    oracle = np.load(tmp_path / "oracle" / "oracle_test.npy")
    assert oracle.shape == (bench.n_test, 2, 48, 40)
    np.testing.assert_array_equal(oracle[-1], bench.oracle(29, 30)[0])


def test_run_synth_is_atomic_and_refuses_to_overwrite(tmp_path: Path):
    opts = SynthOptions(days=12, hr_shape=(16, 12), lr_shape=(4, 3), oracle_members=2)
    out = tmp_path / "bench"
    summary = run_synth(opts, out, fmt="srdrn", progress=False)
    assert "12 days" in summary and (out / "obs_test_mean_std_single.npy").is_file()
    with pytest.raises(InputError, match="exists"):
        run_synth(opts, out, fmt="srdrn", progress=False)
    run_synth(opts, out, fmt="netcdf", overwrite=True, progress=False)
    assert (out / "highres.nc").is_file() and not (out / "obs_test_mean_std_single.npy").exists()
    with pytest.raises(InputError, match="format"):
        run_synth(opts, tmp_path / "other", fmt="zarr", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["bench"]
