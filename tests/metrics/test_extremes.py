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
