"""Tiny hand-made cases for the tests, in both input formats, and settings they share (not tests themselves)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from precip_cvae.config import GateConfig

#: A gate that accepts every sample.
PERMISSIVE = GateConfig(min_mass_ratio=0.0, max_mass_ratio=1e9, wet_margin=1.0, peak_factor=1e9,
                        copy_correlation=2.0, min_diversity=0.0, min_variability=0.0)  # fmt: skip

TINY_MODEL = ["model.d_z=4", "model.base_filters=4", "model.d_x=16", "model.d_y=16", "train.batch_size=8",
              "train.device=cpu", "train.amp=false", "train.warmup_epochs=1", "train.val_samples=2"]  # fmt: skip


def rainy(rng: np.random.Generator, shape) -> np.ndarray:
    """Rounded gamma intensities with 40 % exact zeros: plenty of ties."""
    return np.where(rng.random(shape) < 0.4, 0.0, rng.gamma(0.7, 6.0, shape)).round(1)


def make_case(n_days: int = 40, hr=(6, 5), lr=(3, 2), seed: int = 0):
    """Physical fields for a tiny case: predictors (T, C=2, h, w), precipitation (T, H, W) mm/day, NaN sea."""
    rng = np.random.default_rng(seed)
    H, W = hr
    land = np.ones(hr, bool)
    land[0, :2] = False
    wet = rng.random((n_days, H, W)) < 0.6
    pr = np.where(wet, rng.gamma(0.7, 6.0, (n_days, H, W)), 0.0).astype(np.float32)
    pr[:, ~land] = np.nan
    temp = (280 + rng.normal(0, 3, (n_days, *lr))).astype(np.float32)
    psl = (101000 + rng.normal(0, 800, (n_days, *lr))).astype(np.float32)
    dates = pd.date_range("2000-01-01", periods=n_days, freq="D")
    lat = np.linspace(40.0, 40.0 + 0.04 * (H - 1), H)
    lon = np.linspace(-3.0, -3.0 + 0.04 * (W - 1), W)
    lr_lat = np.linspace(lat[0], lat[-1], lr[0])
    lr_lon = np.linspace(lon[0], lon[-1], lr[1])
    return dict(pr=pr, ta=temp, psl=psl, dates=dates, land=land, lat=lat, lon=lon, lr_lat=lr_lat, lr_lon=lr_lon)


def write_netcdf_case(root: Path, case: dict, pr_units: str = "mm/day") -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    lr = xr.Dataset(
        {
            "ta": (("time", "lat", "lon"), case["ta"], {"units": "K"}),
            "psl": (("time", "lat", "lon"), case["psl"], {"units": "Pa"}),
        },
        coords={"time": case["dates"], "lat": case["lr_lat"], "lon": case["lr_lon"]},
    )
    hr = xr.Dataset(
        {"pr": (("time", "lat", "lon"), case["pr"], {"units": pr_units})},
        coords={"time": case["dates"], "lat": case["lat"], "lon": case["lon"]},
    )
    st = xr.Dataset(
        {"land_mask": (("lat", "lon"), case["land"].astype(np.int8))},
        coords={"lat": case["lat"], "lon": case["lon"]},
    )
    paths = {"lowres": root / "lowres.nc", "highres": root / "highres.nc", "statics": root / "statics.nc"}
    lr.to_netcdf(paths["lowres"])
    hr.to_netcdf(paths["highres"])
    st.to_netcdf(paths["statics"])
    return paths


def write_srdrn_case(root: Path, case: dict, n_train: int) -> Path:
    """SRDRN's preprocessed arrays for ``case``: the first ``n_train`` days are the training period."""
    from precip_cvae.data.normalize import finalize_target_stats, target_to_normalized

    root.mkdir(parents=True, exist_ok=True)
    pr = case["pr"]
    ok = np.isfinite(pr[:n_train])
    logs = np.log1p(np.where(ok, pr[:n_train], 0.0).astype(np.float64))
    mean, std = finalize_target_stats(ok.sum(0).astype(float), logs.sum(0), (logs**2).sum(0))
    z = target_to_normalized(np.nan_to_num(pr, nan=0.0), mean, std)
    x = np.stack([case["ta"], case["psl"]], axis=-1).astype(np.float64)  # (T, h, w, C)
    mu = x[:n_train].mean(axis=(0, 1, 2))
    sd = x[:n_train].std(axis=(0, 1, 2))
    x = ((x - mu) / sd).astype(np.float32)
    np.save(root / "predictors_train_mean_std_separate.npy", x[:n_train])
    np.save(root / "predictors_test_mean_std_separate.npy", x[n_train:])
    np.save(root / "obs_train_mean_std_single.npy", z[:n_train])
    np.save(root / "obs_test_mean_std_single.npy", z[n_train:])
    np.save(root / "ERA5_mean_train.npy", mean)
    np.save(root / "ERA5_std_train.npy", std)
    np.save(root / "land_mask.npy", case["land"].astype(np.uint8))
    np.save(root / "high_res_lat.npy", case["lat"])
    np.save(root / "high_res_lon.npy", case["lon"])
    np.save(root / "low_res_lat.npy", case["lr_lat"])
    np.save(root / "low_res_lon.npy", case["lr_lon"])
    np.save(root / "variables.npy", np.array(["ta", "psl"]))
    dates = np.asarray(case["dates"].values, dtype="datetime64[D]")
    np.save(root / "dates_train.npy", dates[:n_train])
    np.save(root / "dates_test.npy", dates[n_train:])
    return root


def record_auto_batches(monkeypatch) -> dict[int, float]:
    """The training samples/s that ``train.batch_size=auto`` measures, by batch, filled in as it chooses."""
    from precip_cvae import batching

    measured, choose = {}, batching.choose_batch

    def recorded(rate, largest):
        batch, rates = choose(rate, largest)
        measured.update(rates)
        return batch, rates

    monkeypatch.setattr(batching, "choose_batch", recorded)
    return measured
