"""The quality gate rejects planted failures and keeps plausible samples, with the numbers behind it."""

from __future__ import annotations

import numpy as np
import pytest

from precip_cvae.quality import Climatology, GateConfig, assess_day, summarize


@pytest.fixture
def day():
    rng = np.random.default_rng(0)
    land = np.ones((30, 25), bool)
    land[:, :4] = False
    real = np.where(rng.random((30, 25)) < 0.7, rng.gamma(0.8, 12.0, (30, 25)), 0.0).astype(np.float32)
    real[~land] = np.nan
    clim = Climatology({"heavy": (0.5, 0.9), "moderate": (0.2, 0.8), "dry": (0.0, 0.3)}, record_max=200.0)
    return real, land, clim, rng


def _verdict(sample, real, land, clim, config=None):
    return assess_day(sample[None], real, land, "heavy", clim, config or GateConfig())[0]


def test_a_plausible_different_field_is_accepted(day):
    real, land, clim, rng = day
    other = np.where(rng.random(real.shape) < 0.7, rng.gamma(0.8, 12.0, real.shape), 0.0).astype(np.float32)
    v = _verdict(other, real, land, clim)
    assert v["accepted"], v["reasons"]
    assert 0.5 < v["mass_ratio"] < 2.0 and abs(v["correlation_with_real"]) < 0.2


def test_planted_copy_is_rejected(day):
    real, land, clim, rng = day
    copy = np.nan_to_num(real) * (1 + 0.01 * rng.standard_normal(real.shape)).astype(np.float32)
    v = _verdict(copy, real, land, clim)
    assert not v["accepted"] and "copy" in v["codes"]
    assert v["correlation_with_real"] > 0.99


def test_planted_drizzle_everywhere_is_rejected(day):
    real, land, clim, _ = day
    drizzle = np.full(real.shape, float(np.nanmean(real)), np.float32)  # the right mass, wet everywhere, flat
    v = _verdict(drizzle, real, land, clim)
    assert not v["accepted"]
    assert {"wet_fraction", "flat"} <= set(v["codes"])
    assert v["mass_ratio"] == pytest.approx(1.0, rel=1e-5)
    assert v["wet_fraction"] == 1.0


def test_planted_zero_field_is_rejected(day):
    real, land, clim, _ = day
    v = _verdict(np.zeros(real.shape, np.float32), real, land, clim)
    assert not v["accepted"] and {"low_mass", "wet_fraction"} <= set(v["codes"])
    assert v["mass_ratio"] == 0.0


def test_peak_and_mass_bounds(day):
    real, land, clim, _ = day
    spike = np.nan_to_num(real).copy()
    spike[10, 10] = 1000.0
    assert "peak" in _verdict(spike, real, land, clim)["codes"]
    assert "high_mass" in _verdict(np.nan_to_num(real) * 8 + 1, real, land, clim)["codes"]
    loose = GateConfig(min_mass_ratio=0.0)
    assert "low_mass" not in _verdict(np.nan_to_num(real) * 0.05, real, land, clim, loose)["codes"]


def test_duplicates_within_a_day_and_the_summary(day):
    real, land, clim, rng = day
    a = np.where(rng.random(real.shape) < 0.7, rng.gamma(0.8, 12.0, real.shape), 0.0).astype(np.float32)
    verdicts = assess_day(np.stack([a, a * 1.001, a[::-1]]), real, land, "heavy", clim, GateConfig())
    assert [v["accepted"] for v in verdicts] == [True, False, True]
    assert verdicts[1]["codes"] == ["duplicate"]
    summary = summarize(verdicts)
    assert {k: summary[k] for k in ("samples", "accepted", "rejected", "reasons")} == {
        "samples": 3, "accepted": 2, "rejected": 1, "reasons": {"duplicate": 1}}  # fmt: skip
    # the mean mass ratio of the two accepted samples (a and its mirror image: the same land total unless land is
    # not symmetric), by hand
    expected = np.mean([verdicts[0]["mass_ratio"], verdicts[2]["mass_ratio"]])
    assert summary["accepted_mass_ratio"] == pytest.approx(expected)


def test_the_summary_names_a_mass_bias_that_every_sample_shares():
    def verdict(ratio, accepted=True):
        return {"accepted": accepted, "codes": [] if accepted else ["peak"], "mass_ratio": ratio}

    wet = summarize([verdict(1.12), verdict(1.14), verdict(3.0, accepted=False)])
    assert wet["accepted_mass_ratio"] == pytest.approx(1.13)
    assert "1.13 x" in wet["mass_bias"] and "wetter" in wet["mass_bias"]
    assert "drier" in summarize([verdict(0.85), verdict(0.87)])["mass_bias"]
    assert summarize([verdict(1.05), verdict(0.97)])["mass_bias"] is None  # within 10 %
    assert summarize([verdict(1.5, accepted=False)])["accepted_mass_ratio"] is None


def test_climatology_bands_from_observed_days():
    wet = np.r_[np.linspace(0.0, 0.2, 50), np.linspace(0.9, 1.0, 50)]
    cats = ["dry"] * 50 + ["heavy"] * 50
    clim = Climatology.from_days(wet, cats, record_max=100.0, margin=0.05)
    assert clim.wet_band["dry"] == pytest.approx((0.0, np.percentile(wet[:50], 95) + 0.05))
    assert clim.wet_band["heavy"][0] == pytest.approx(np.percentile(wet[50:], 5) - 0.05)
    assert clim.wet_band["heavy"][1] == 1.0
