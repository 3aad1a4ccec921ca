"""The sample store: what the writer writes, the reader reads back; missing files are named."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from precip_cvae.data.sample_store import MANIFEST, NETCDF, SampleStore, SampleWriter, stem
from precip_cvae.errors import InputError


def test_written_samples_read_back_and_only_accepted_ones_are_listed(tmp_path):
    rng = np.random.default_rng(0)
    K, (H, W) = 3, (4, 5)
    lat, lon = np.meshgrid(np.linspace(40, 41, H), np.linspace(-3, -2, W), indexing="ij")
    days = {7: [True, False, True], 12: [False, False, True]}
    written = {}
    with SampleWriter(tmp_path, K, (H, W), {"sampling_mode": "prior"}, lat, lon, keep_rejected=True) as writer:
        for day, verdicts in days.items():
            inputs = rng.normal(size=(2, 2, 3)).astype(np.float32)
            z = rng.normal(size=(K, H, W)).astype(np.float32)
            mm = np.expm1(np.abs(z))
            stems = writer.add_day(
                day, "2001-02-03" if day == 7 else "2001-02-08", inputs, z, mm, [{"accepted": ok} for ok in verdicts]
            )
            assert stems == [stem(day, k) if ok else None for k, ok in enumerate(verdicts)]
            written[day] = (inputs, z, mm)
        records = [{"day": d, "sample": k, "accepted": ok} for d, v in days.items() for k, ok in enumerate(v)]
        writer.finish({"samples": records})
    store = SampleStore(tmp_path)
    assert store.exists() and store.accepted() == {7: [0, 2], 12: [2]}
    inputs, target = store.load(7, 2)
    np.testing.assert_array_equal(inputs, written[7][0])
    np.testing.assert_array_equal(target, written[7][1][2][None])
    assert (tmp_path / "rejected" / f"{stem(7, 1)}.Y_hr_syn.npy").is_file()
    ds = xr.open_dataset(tmp_path / NETCDF)
    assert ds["pr"].dims == ("realization", "time", "y", "x") and ds.attrs["sampling_mode"] == "prior"
    assert list(ds["day_id"].values) == [7, 12] and ds["accepted"].values[:, 1].tolist() == [0, 0, 1]
    assert [str(t)[:10] for t in ds["time"].values] == ["2001-02-03", "2001-02-08"]
    np.testing.assert_allclose(ds["pr"].values[:, 0], written[7][2], rtol=1e-6)
    np.testing.assert_allclose(ds["lat"].values, lat)
    ds.close()


def test_a_listed_but_missing_file_is_named(tmp_path):
    with SampleWriter(tmp_path, 1, (2, 2), {}, dated=False) as writer:
        writer.add_day(
            3,
            None,
            np.zeros((1, 1, 1), np.float32),
            np.zeros((1, 2, 2), np.float32),
            np.zeros((1, 2, 2)),
            [{"accepted": True}],
        )
        writer.finish({"samples": [{"day": 3, "sample": 0, "accepted": True}]})
    (tmp_path / f"{stem(3, 0)}.X_lr_ref.npy").unlink()
    with pytest.raises(InputError, match=r"day_000003_sample_00\.X_lr_ref\.npy: listed as accepted"):
        SampleStore(tmp_path).accepted()
    with pytest.raises(InputError, match="sample file not found"):
        SampleStore(tmp_path).load(3, 0)
    assert not SampleStore(tmp_path / "nowhere").exists()
    assert (tmp_path / MANIFEST).is_file()


def test_days_without_dates_get_no_time_coordinate(tmp_path):
    # SRDRN arrays carry no dates: the store then has a time dimension without a coordinate (CF forbids missing
    # values in one), the days named by day_id; a dated store refuses a day without a date
    K, (H, W) = 2, (3, 4)
    verdicts = [{"accepted": True}] * K
    inputs, z = np.zeros((1, 2, 2), np.float32), np.zeros((K, H, W), np.float32)
    (tmp_path / "undated").mkdir()
    with SampleWriter(tmp_path / "undated", K, (H, W), {}, dated=False) as writer:
        for day in (3, 5):
            writer.add_day(day, None, inputs, z, z, verdicts)
    ds = xr.open_dataset(tmp_path / "undated" / NETCDF)
    assert "time" not in ds.variables and ds.sizes["time"] == 2 and list(ds["day_id"].values) == [3, 5]
    ds.close()
    (tmp_path / "dated").mkdir()
    with SampleWriter(tmp_path / "dated", K, (H, W), {}) as writer:
        with pytest.raises(ValueError, match="day 3 has no date"):
            writer.add_day(3, None, inputs, z, z, verdicts)
