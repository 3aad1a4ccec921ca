"""`prepare` on hand-made data: layout, thresholds, categories, splits, both input paths, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from precip_cvae.cli import main
from precip_cvae.data.netcdf import read_netcdf
from precip_cvae.data.normalize import target_to_mm_per_day
from precip_cvae.data.prepare import PrepareOptions, prepare
from precip_cvae.data.srdrn import read_srdrn_directory
from tests.cases import make_case, write_netcdf_case, write_srdrn_case

TRAIN, TEST = "2000-01-01:2000-01-30", "2000-01-31:2000-02-09"  # 30 + 10 days of make_case()


def _load(root: Path, name: str):
    return json.loads((root / "data" / "metadata" / name).read_text())


def _prepare_nc(paths, out, **kw):
    source = read_netcdf([paths["lowres"]], paths["highres"], TRAIN, TEST, statics=[paths["statics"]])
    return prepare(source, out, PrepareOptions(progress=False, **kw))


def test_layout_shapes_splits_and_thresholds(tmp_path, tiny_case, tiny_netcdf):
    _prepare_nc(tiny_netcdf, tmp_path / "out")
    data = tmp_path / "out" / "data"
    assert np.load(data / "X_lr" / "day_000000.npy").shape == (2, 3, 2)
    assert np.load(data / "Y_hr" / "day_000039.npy").shape == (1, 6, 5)
    assert len(list((data / "Y_hr").glob("day_*.npy"))) == 40
    for name in ("land_sea_mask", "dist_to_coast_km", "valid_mask", "lat", "lon"):
        assert np.load(data / "statics" / f"{name}.npy").shape == (6, 5)
    split = _load(tmp_path / "out", "split.json")
    assert split == {"train": list(range(24)), "val": list(range(24, 30)), "test": list(range(30, 40))}
    assert _load(tmp_path / "out", "H_W.json")["H"] == 6
    thresholds = _load(tmp_path / "out", "thresholds.json")
    pr = tiny_case["pr"][:30]
    direct = pr[np.isfinite(pr)]
    for key, p in (("P95", 95), ("P99", 99), ("P99.9", 99.9)):
        assert thresholds[key] == pytest.approx(float(np.percentile(direct, p)), rel=1e-6)
    assert thresholds["units"] == "mm/day"
    # the per-pixel normalized equivalent selects exactly the pixels at or above the mm/day threshold
    mean = np.load(data / "metadata" / "target_log1p_mean.npy")
    std = np.load(data / "metadata" / "target_log1p_std.npy")
    zt = np.load(data / "metadata" / "threshold_P95_normalized.npy")
    z = np.stack([np.load(data / "Y_hr" / f"day_{i:06d}.npy")[0] for i in range(30)])
    land = tiny_case["land"]
    away = np.abs(pr - thresholds["P95"]) > 1e-3
    assert np.array_equal((z >= zt)[:, land][away[:, land]], (pr >= thresholds["P95"])[:, land][away[:, land]])
    # round trip to mm/day, NaN over the sea
    np.testing.assert_allclose(target_to_mm_per_day(z, mean, std)[:, land], pr[:, land], rtol=1e-5, atol=1e-5)
    assert np.isnan(z[:, ~land]).all()
    assert not np.load(data / "statics" / "valid_mask.npy")[~land].any()


def test_the_same_files_prepared_elsewhere_are_the_same_dataset(tmp_path, tiny_case):
    """The dataset's hash (what sample stores and experiment runs record) leaves out `prepare`'s report, which names
    where the input files were and where it wrote: copies of the input prepared into two folders hash alike, a store
    drawn for one is used with the other, and a store that recorded the whole folder's hash (before the report was
    left out) is still taken. Other data, or other options, hash differently."""
    import shutil

    from precip_cvae.data.dataset import PreparedData
    from precip_cvae.data.sample_store import SampleStore
    from precip_cvae.errors import InputError
    from precip_cvae.fileio import content_sha256

    first = write_netcdf_case(tmp_path / "a" / "nc", tiny_case)
    second = {k: tmp_path / "b" / "elsewhere" / v.name for k, v in first.items()}
    shutil.copytree(first["highres"].parent, second["highres"].parent)
    _prepare_nc(first, tmp_path / "one")
    _prepare_nc(second, tmp_path / "two")
    one, two = PreparedData(tmp_path / "one" / "data"), PreparedData(tmp_path / "two" / "data")
    assert _load(tmp_path / "one", "summary.json")["input"] != _load(tmp_path / "two", "summary.json")["input"]
    assert one.metadata_sha256 == two.metadata_sha256
    assert content_sha256(one.root / "metadata") != content_sha256(two.root / "metadata")  # the reports differ
    store = tmp_path / "store"
    store.mkdir()
    for recorded in (one.metadata_sha256, content_sha256(two.root / "metadata")):
        (store / "manifest.json").write_text(json.dumps({"metadata_sha256": recorded, "samples": []}))
        assert SampleStore(store, two).manifest()["metadata_sha256"] == recorded
    (store / "manifest.json").write_text(json.dumps({"metadata_sha256": content_sha256(one.root / "metadata")}))
    with pytest.raises(InputError, match="drawn for another dataset"):  # the other folder's report: not this one's
        SampleStore(store, two).manifest()
    _prepare_nc(second, tmp_path / "three", heavy_quantile=0.9)
    assert PreparedData(tmp_path / "three" / "data").metadata_sha256 != one.metadata_sha256


def test_categories_follow_the_documented_rule(tmp_path):
    case = make_case(n_days=40)
    land = case["land"]
    # hand-made land means: days 0..9 dry, the others 1.5 + 0.01 i mm/day, two storms
    daily = (1.5 + 0.01 * np.arange(40)).astype(np.float32)
    daily[:10] = 0.2
    daily[12] = 50.0
    daily[35] = 60.0
    case["pr"] = np.where(land, daily[:, None, None], np.nan).astype(np.float32)
    paths = write_netcdf_case(tmp_path / "nc", case)
    _prepare_nc(paths, tmp_path / "out")
    cats = _load(tmp_path / "out", "categories.json")
    heavy_threshold = _load(tmp_path / "out", "thresholds.json")["categories"]["heavy_land_mean_mm_per_day"]
    # by hand: sorted training means ..., 1.78, 1.79, 50 -> P95 at position 27.55 = 1.78 + 0.55 * 0.01
    assert heavy_threshold == pytest.approx(1.7855, abs=1e-5)
    heavy = [int(k) for k, v in cats.items() if v == "heavy"]
    assert heavy == [12, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39]
    assert [k for k, v in cats.items() if v == "dry"] == [f"{i:06d}" for i in range(10)]
    assert cats["000020"] == "moderate"


def test_srdrn_and_netcdf_paths_agree(tmp_path, tiny_case):
    nc = write_netcdf_case(tmp_path / "nc", tiny_case)
    srdrn = write_srdrn_case(tmp_path / "srdrn", tiny_case, n_train=30)
    _prepare_nc(nc, tmp_path / "a")
    prepare(read_srdrn_directory(srdrn), tmp_path / "b", PrepareOptions(progress=False))
    for name in ("split.json", "categories.json", "H_W.json", "dates.json"):
        assert _load(tmp_path / "a", name) == _load(tmp_path / "b", name), name
    ta, tb = _load(tmp_path / "a", "thresholds.json"), _load(tmp_path / "b", "thresholds.json")
    for key in ("P95", "P99", "P99.9"):
        assert ta[key] == pytest.approx(tb[key], rel=1e-5)
    for i in (0, 17, 39):
        for kind in ("X_lr", "Y_hr"):
            a = np.load(tmp_path / "a" / "data" / kind / f"day_{i:06d}.npy")
            b = np.load(tmp_path / "b" / "data" / kind / f"day_{i:06d}.npy")
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, equal_nan=True)
    for name in ("valid_mask", "land_sea_mask", "dist_to_coast_km"):
        np.testing.assert_allclose(
            np.load(tmp_path / "a" / "data" / "statics" / f"{name}.npy"),
            np.load(tmp_path / "b" / "data" / "statics" / f"{name}.npy"),
            rtol=1e-6,
        )


def test_real_world_file_quirks(tmp_path):
    """Descending latitude, noon time stamps, latitude/longitude names, kg m-2 s-1, another predictor grid."""
    case = make_case(n_days=40)
    paths = write_netcdf_case(tmp_path / "plain", case)
    _prepare_nc(paths, tmp_path / "plain_out")

    hr = xr.open_dataset(paths["highres"]).load()
    hr = hr.isel(lat=slice(None, None, -1)).rename(lat="latitude", lon="longitude")
    hr["pr"] = hr["pr"] / 86400.0
    hr["pr"].attrs["units"] = "kg m-2 s-1"
    hr = hr.assign_coords(time=hr.time + np.timedelta64(12, "h"))
    lr = xr.open_dataset(paths["lowres"]).load()
    other = lr[["psl"]].interp(lat=[40.02, 40.18], lon=[-2.98, -2.86])
    quirky = tmp_path / "quirky"
    quirky.mkdir()
    hr.to_netcdf(quirky / "hr.nc")
    lr[["ta"]].to_netcdf(quirky / "ta.nc")
    other.to_netcdf(quirky / "psl.nc")
    source = read_netcdf(
        [quirky / "ta.nc", quirky / "psl.nc"], quirky / "hr.nc", TRAIN, TEST, statics=[paths["statics"]]
    )
    assert any("bilinear from 2x2 to 3x2" in n for n in source.notes)
    prepare(source, tmp_path / "quirky_out", PrepareOptions(progress=False))
    for i in (3, 33):
        a = np.load(tmp_path / "plain_out" / "data" / "Y_hr" / f"day_{i:06d}.npy")
        b = np.load(tmp_path / "quirky_out" / "data" / "Y_hr" / f"day_{i:06d}.npy")
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, equal_nan=True)


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def _no_partial(out: Path):
    assert not (out / "data").exists()
    assert not [p for p in out.parent.rglob("*.partial")] if out.parent.exists() else True


def test_bad_inputs_give_one_clear_line_and_leave_nothing(tmp_path, capsys, tiny_case):
    nc = write_netcdf_case(tmp_path / "nc", tiny_case)
    out = tmp_path / "out"
    base = ["prepare", "--highres", str(nc["highres"]), "--output_dir", str(out), "--quiet"]
    periods = ["--train-period", TRAIN, "--test-period", TEST]

    assert "missing.nc: file not found" in _cli_error(
        capsys, [*base, "--lowres", str(tmp_path / "missing.nc"), *periods]
    )
    line = _cli_error(
        capsys,
        [*base, "--lowres", str(nc["lowres"]), "--train-period", TRAIN, "--test-period", "2001-01-01:2001-02-01"],
    )
    assert "--test-period" in line and "no day" in line
    assert "overlap" in _cli_error(
        capsys, [*base, "--lowres", str(nc["lowres"]), "--train-period", TRAIN, "--test-period", TRAIN]
    )

    bad_units = write_netcdf_case(tmp_path / "units", tiny_case, pr_units="furlongs")
    line = _cli_error(
        capsys,
        [
            "prepare",
            "--lowres",
            str(bad_units["lowres"]),
            "--highres",
            str(bad_units["highres"]),
            "--output_dir",
            str(out),
            *periods,
        ],
    )
    assert "highres.nc:pr" in line and "furlongs" in line

    nan_case = make_case()
    nan_case["ta"][33, 1, 1] = np.nan
    nan_paths = write_netcdf_case(tmp_path / "nan", nan_case)
    line = _cli_error(
        capsys,
        [
            "prepare",
            "--lowres",
            str(nan_paths["lowres"]),
            "--highres",
            str(nan_paths["highres"]),
            "--output_dir",
            str(out),
            "--quiet",
            *periods,
        ],
    )
    assert "lowres.nc:ta" in line and "2000-02-03" in line
    _no_partial(out)

    srdrn = write_srdrn_case(tmp_path / "srdrn", tiny_case, n_train=30)
    np.save(srdrn / "obs_train_mean_std_single.npy", np.zeros((29, 6, 5), np.float32))
    line = _cli_error(capsys, ["prepare", "--input_dir", str(srdrn), "--output_dir", str(out)])
    assert "30 days" in line and "obs_train_mean_std_single.npy has 29" in line
    (srdrn / "ERA5_std_train.npy").unlink()
    np.save(srdrn / "obs_train_mean_std_single.npy", np.zeros((30, 6, 5), np.float32))
    assert "ERA5_std_train.npy: file not found" in _cli_error(
        capsys, ["prepare", "--input_dir", str(srdrn), "--output_dir", str(out)]
    )
    _no_partial(out)


def test_existing_output_needs_overwrite(tmp_path, capsys, tiny_netcdf):
    argv = [
        "prepare",
        "--lowres",
        str(tiny_netcdf["lowres"]),
        "--highres",
        str(tiny_netcdf["highres"]),
        "--train-period",
        TRAIN,
        "--test-period",
        TEST,
        "--output_dir",
        str(tmp_path / "o"),
        "--quiet",
    ]
    assert main(argv) == 0
    stamp = (tmp_path / "o" / "data" / "metadata" / "split.json").stat().st_mtime_ns
    capsys.readouterr()
    assert "already exists" in _cli_error(capsys, argv)
    assert (tmp_path / "o" / "data" / "metadata" / "split.json").stat().st_mtime_ns == stamp
    assert main([*argv, "--overwrite"]) == 0
    assert not list(tmp_path.glob("o/.*"))


def test_failure_midway_keeps_the_old_dataset(tmp_path, tiny_case):
    nc = write_netcdf_case(tmp_path / "nc", tiny_case)
    _prepare_nc(nc, tmp_path / "o")
    source = read_netcdf([nc["lowres"]], nc["highres"], TRAIN, TEST)
    original = source.read_predictors

    def failing(start, stop):
        if start >= 32:
            raise OSError("disk vanished")
        return original(start, stop)

    source.read_predictors = failing
    with pytest.raises(OSError):
        prepare(source, tmp_path / "o", PrepareOptions(progress=False, overwrite=True, chunk_days=8))
    assert len(list((tmp_path / "o" / "data" / "Y_hr").glob("*.npy"))) == 40
    assert sorted(p.name for p in tmp_path.joinpath("o").iterdir()) == ["data"]


def test_eobs_iberia_real_data(tmp_path, shared_data):
    d = shared_data / "eobs_iberia"
    source = read_netcdf(
        [d / "NCEP_Iberia_hus850.nc", d / "NCEP_Iberia_psl.nc", d / "NCEP_Iberia_ta850.nc", d / "NCEP_Iberia_pr.nc"],
        d / "EOBS_Iberia_pr.nc",
        "1982-12-01:1998-02-28",
        "1998-12-01:2002-02-28",
        statics=[d / "EOBS_Iberia_grid_static.nc"],
    )
    summary = prepare(source, tmp_path, PrepareOptions(progress=False))
    data = tmp_path / "data"
    assert np.load(data / "Y_hr" / "day_000000.npy").shape == (1, 19, 29)
    assert np.load(data / "X_lr" / "day_000000.npy").shape == (4, 5, 7)
    rr = xr.open_dataset(d / "EOBS_Iberia_pr.nc").rr.sel(time=slice("1982-12-01", "1998-02-28")).values
    thresholds = _load(tmp_path, "thresholds.json")
    assert thresholds["P99"] == pytest.approx(float(np.nanpercentile(rr, 99)), rel=1e-6)
    assert thresholds["P95"] == pytest.approx(float(np.nanpercentile(rr, 95)), rel=1e-6)
    assert summary["valid_pixels"] == 328
    assert "324 with data every day" in summary["missing"] and "missing 1112 of 1805" in summary["missing"]
    assert summary["splits"]["test"]["days"] == 361 and summary["splits"]["test"]["heavy"] == 16
    assert summary["splits"]["train"]["days"] + summary["splits"]["val"]["days"] == 1444
    assert any("Kg/m^2/s" in n for n in summary["notes"])


def test_fraser_real_data_with_a_coarsened_input(tmp_path, shared_data):
    d = shared_data / "fraser_bc"
    source = read_netcdf(
        [d / "tp.nc"], d / "tp.nc", "1986-01-01:2009-12-31", "2010-01-01:2018-12-31", statics=[d / "dem.nc"], coarsen=5
    )
    assert source.lr_shape == (3, 7) and source.hr_shape == (14, 31)
    assert source.hr_lat[0, 0] < source.hr_lat[-1, 0]  # flipped to ascending
    block = source.read_target_mm(100, 101)[0, :5, :5].mean()
    # the predictor is normalized in prepare; here the raw block mean equals the target's
    assert source.read_predictors(100, 101)[0, 0, 0, 0] == pytest.approx(block, rel=1e-5)
    # the one predictor is the target's own variable: the operator is recorded for the downstream experiment
    assert source.derived == [{"operator": "block_mean", "factor": 5, "how": source.derived[0]["how"]}]


def test_synthetic_benchmark_srdrn_and_netcdf_prepare_alike(tmp_path):
    """The same synthetic data through both input paths gives the same prepared dataset."""
    from precip_cvae.data.synthetic import SynthOptions, run_synth

    options = SynthOptions(days=90, hr_shape=(20, 18), lr_shape=(4, 3), oracle_members=2, seed=3)
    run_synth(options, tmp_path / "srdrn", fmt="srdrn", progress=False)
    run_synth(options, tmp_path / "nc", fmt="netcdf", progress=False)
    prepare(read_srdrn_directory(tmp_path / "srdrn"), tmp_path / "a", PrepareOptions(progress=False))
    nc = tmp_path / "nc"
    dates = np.load(tmp_path / "srdrn" / "dates_train.npy"), np.load(tmp_path / "srdrn" / "dates_test.npy")
    source = read_netcdf(
        [nc / "lowres.nc"],
        nc / "highres.nc",
        f"{dates[0][0]}:{dates[0][-1]}",
        f"{dates[1][0]}:{dates[1][-1]}",
        statics=[nc / "statics.nc"],
    )
    prepare(source, tmp_path / "b", PrepareOptions(progress=False))
    # the oracle is found through an explicit field, whichever format the benchmark was written in
    from precip_cvae.data.dataset import PreparedData

    assert PreparedData(tmp_path / "a" / "data").oracle_path == (tmp_path / "srdrn" / "oracle" / "oracle_test.npy")
    assert PreparedData(tmp_path / "b" / "data").oracle_path == (nc / "oracle" / "oracle_test.npy")
    for name in ("split.json", "categories.json", "dates.json"):
        assert _load(tmp_path / "a", name) == _load(tmp_path / "b", name), name
    ta, tb = _load(tmp_path / "a", "thresholds.json"), _load(tmp_path / "b", "thresholds.json")
    for key in ("P95", "P99", "P99.9"):
        assert ta[key] == pytest.approx(tb[key], rel=1e-4)
    for i in (0, 45, 89):
        for kind in ("X_lr", "Y_hr"):
            a = np.load(tmp_path / "a" / "data" / kind / f"day_{i:06d}.npy")
            b = np.load(tmp_path / "b" / "data" / kind / f"day_{i:06d}.npy")
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3, equal_nan=True)
    for name in ("valid_mask", "land_sea_mask", "elevation", "dist_to_coast_km"):
        np.testing.assert_allclose(
            np.load(tmp_path / "a" / "data" / "statics" / f"{name}.npy"),
            np.load(tmp_path / "b" / "data" / "statics" / f"{name}.npy"),
            rtol=1e-5,
        )


def test_zarr_and_projected_grids(tmp_path, tiny_case):
    """Zarr stores and (y, x) grids with 2-D lat/lon coordinates read like the plain NetCDF."""
    paths = write_netcdf_case(tmp_path / "nc", tiny_case)
    _prepare_nc(paths, tmp_path / "plain")
    hr = xr.open_dataset(paths["highres"]).load()
    lat2, lon2 = np.meshgrid(hr.lat.values, hr.lon.values, indexing="ij")
    projected = xr.Dataset(
        {"pr": (("time", "y", "x"), hr.pr.values, {"units": "mm/day"})},
        coords={"time": hr.time, "lat": (("y", "x"), lat2), "lon": (("y", "x"), lon2)},
    )
    projected.to_zarr(tmp_path / "hr.zarr")
    xr.open_dataset(paths["lowres"]).load().to_zarr(tmp_path / "lr.zarr")
    source = read_netcdf([tmp_path / "lr.zarr"], tmp_path / "hr.zarr", TRAIN, TEST, statics=[paths["statics"]])
    np.testing.assert_allclose(source.hr_lat, lat2)
    prepare(source, tmp_path / "zarr", PrepareOptions(progress=False))
    names_a = [v["name"] for v in _load(tmp_path / "plain", "variables.json")["variables"]]
    names_b = [v["name"] for v in _load(tmp_path / "zarr", "variables.json")["variables"]]
    order = [names_b.index(n) for n in names_a]  # a Zarr store may list its variables in another order
    for i in (0, 39):
        a = np.load(tmp_path / "plain" / "data" / "X_lr" / f"day_{i:06d}.npy")
        b = np.load(tmp_path / "zarr" / "data" / "X_lr" / f"day_{i:06d}.npy")
        np.testing.assert_allclose(a, b[order], rtol=1e-5, atol=1e-6)
        a = np.load(tmp_path / "plain" / "data" / "Y_hr" / f"day_{i:06d}.npy")
        b = np.load(tmp_path / "zarr" / "data" / "Y_hr" / f"day_{i:06d}.npy")
        np.testing.assert_allclose(a, b, rtol=1e-6, equal_nan=True)


def test_unsorted_time_axes_are_read_in_date_order(tmp_path, tiny_case):
    # files concatenated out of order are not refused: days are matched by date, so the prepared dataset is the
    # one the sorted files give, byte for byte
    nc = write_netcdf_case(tmp_path / "sorted", tiny_case)
    _prepare_nc(nc, tmp_path / "a")
    order = np.random.default_rng(0).permutation(40)
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for name in ("lowres", "highres"):
        with xr.open_dataset(nc[name]) as ds:
            ds.load().isel(time=order).to_netcdf(shuffled / f"{name}.nc")
    _prepare_nc({**nc, "lowres": shuffled / "lowres.nc", "highres": shuffled / "highres.nc"}, tmp_path / "b")
    for folder in ("X_lr", "Y_hr"):
        for i in (0, 17, 39):
            a = (tmp_path / "a" / "data" / folder / f"day_{i:06d}.npy").read_bytes()
            assert a == (tmp_path / "b" / "data" / folder / f"day_{i:06d}.npy").read_bytes()
    assert _load(tmp_path / "a", "dates.json") == _load(tmp_path / "b", "dates.json")
