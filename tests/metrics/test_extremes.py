"""Quantile bias, wet-day frequency, Rx1day and the streaming histogram."""

from __future__ import annotations

import math

import numpy as np
import pytest

from precip_cvae import metrics as m
from tests.cases import rainy


def test_quantile_bias_by_hand():
    out = m.quantile_bias(np.arange(101.0), 2 * np.arange(101.0), qs=(0.95, 0.999))
    assert set(out) == {"P95", "P99.9"}
    assert out["P95"] == pytest.approx({"pred": 95.0, "obs": 190.0, "bias": -95.0, "ratio": 0.5})
    assert out["P99.9"]["bias"] == pytest.approx(99.9 - 199.8)


def test_wet_day_frequency_and_rx1day_by_hand():
    field = np.array([[[0.0, 1.0], [0.5, np.nan]], [[3.0, 0.2], [1.0, 2.0]]])  # (T=2, 2, 2)
    mask = np.array([[True, True], [True, False]])
    assert m.wet_day_frequency(field, mask) == pytest.approx(3 / 6)  # 1.0, 3.0, 1.0 of six
    np.testing.assert_array_equal(m.rx1day(field, mask), [[3.0, 1.0], [1.0, np.nan]])
    sim = field + np.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [2.0, 0.0]]])
    # Rx1day sim - obs: (3 - 3) + (1 - 1) + (3 - 1) over 3 pixels
    assert m.rx1day_bias(sim, field, mask) == pytest.approx(2 / 3)
    # two members: member 0 as above (bias 2/3), member 1 = obs + 1 (bias 1)
    members = np.stack([sim, field + 1.0], axis=1)
    assert m.rx1day_bias(members, field, mask) == pytest.approx((2 / 3 + 1) / 2)


def test_log_histogram_quantiles():
    rng = np.random.default_rng(41)
    values = rainy(rng, 300_000) + rng.gamma(0.7, 6.0, 300_000) * (rng.random(300_000) < 0.5)
    h = m.LogHistogram()
    for chunk in np.array_split(values, 7):
        h.add(chunk)
    for q in (0.3, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        assert h.quantile(q) == pytest.approx(np.quantile(values, q), rel=2e-3, abs=1e-3), q
    assert math.isnan(m.LogHistogram().quantile(0.5))


def test_intensities_without_quantiles_keep_counts_only_and_the_same_wet_frequencies():
    """Validation's Intensities(quantiles=()) keeps no histogram; its wet-day frequencies, merged from two halves, equal
    those of the full accumulator over all the days (by hand: shares of valid values >= wet)."""
    from precip_cvae.metrics import Fields, Intensities

    rng = np.random.default_rng(5)
    ens = rng.gamma(0.4, 3.0, (4, 3, 6, 5)) * (rng.random((4, 3, 6, 5)) < 0.5)
    obs = rng.gamma(0.4, 3.0, (4, 6, 5))
    obs[0, 1, 1] = np.nan
    full, first, second = Intensities(), Intensities(quantiles=(), wet=1.0), Intensities(quantiles=(), wet=1.0)
    for i in range(4):
        full.accum(Fields(ens[i], obs[i]))
        (first if i < 2 else second).accum(Fields(ens[i], obs[i]))
    first.merge(second)
    assert first.sim is None and first.obs is None
    valid = np.isfinite(obs)
    expect_sim = (ens.transpose(1, 0, 2, 3)[:, valid] >= 1.0).mean()
    expect_obs = (obs[valid] >= 1.0).mean()
    got = first.compute()
    assert got == {
        "wet_day_frequency_sim": pytest.approx(expect_sim),
        "wet_day_frequency_obs": pytest.approx(expect_obs),
    }
    assert full.compute()["wet_day_frequency_sim"] == got["wet_day_frequency_sim"]
    assert full.compute()["wet_day_frequency_obs"] == got["wet_day_frequency_obs"]
