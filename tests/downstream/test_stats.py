"""The experiment's seed-and-day bootstrap: indices, hand values, coverage of a known difference, the MDE."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from precip_cvae.downstream.stats import block_indices, paired_difference


def test_block_indices_are_runs_of_consecutive_days_inside_the_record():
    rng = np.random.default_rng(0)
    idx = block_indices(30, 7, 200, rng)
    assert idx.shape == (200, 30) and idx.min() >= 0 and idx.max() <= 29
    blocks = idx[:, :28].reshape(200, 4, 7)
    assert (np.diff(blocks, axis=2) == 1).all()  # each block is 7 consecutive days
    assert len(np.unique(idx[:, 0])) == 24  # every start from 0 to 23 is drawn
    assert block_indices(5, 9, 3, rng).shape == (3, 5)  # a block longer than the record is the record


def test_observed_difference_by_hand_and_a_constant_shift_has_no_spread():
    num = np.array([[2.0, 4.0, 0.0], [1.0, 1.0, 1.0]])
    den = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # seed means of sum(num)/sum(den): (6/2 + 3/3) / 2 = 2.0; baseline: num - 0.5 per counted day -> 1.5
    result = paired_difference(num, den, num - 0.5 * den, den, block=2, n_boot=200)
    assert result["mean"] == pytest.approx(0.5)
    assert result["low"] == pytest.approx(0.5) and result["high"] == pytest.approx(0.5)
    assert result["se"] == pytest.approx(0.0, abs=1e-12) and result["mde"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"\(seeds, days\)"):
        paired_difference(num, den, num[:1], den[:1])


def _simulated(rng, delta, seeds=5, days=120, phi=0.7):
    """Daily scores with AR(1) weather shared by both arms, a seed effect and day-level run noise."""
    weather = np.zeros(days)
    for t in range(1, days):
        weather[t] = phi * weather[t - 1] + rng.normal()
    weather = 10.0 + 2.0 * weather
    base = weather[None] + rng.normal(0, 0.5, (seeds, 1)) + rng.normal(0, 1.0, (seeds, days))
    arm = weather[None] + delta + rng.normal(0, 0.5, (seeds, 1)) + rng.normal(0, 1.0, (seeds, days))
    return arm, base, np.ones((seeds, days))


def test_intervals_cover_a_known_difference_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    covered, widths = 0, []
    for i in range(100):
        arm, base, ones = _simulated(rng, delta=0.8)
        r = paired_difference(arm, ones, base, ones, block=7, n_boot=300, seed=i)
        covered += r["low"] <= 0.8 <= r["high"]
        widths.append(r["high"] - r["low"])
    assert covered >= 90, covered
    assert 0.5 < np.mean(widths) < 2.5  # informative, not trivially wide (the true sd of the difference: 0.32)


def test_the_mde_is_the_power_formula_and_a_difference_of_twice_it_is_found():
    rng = np.random.default_rng(2)
    arm, base, ones = _simulated(rng, delta=0.0)
    r = paired_difference(arm, ones, base, ones, n_boot=500)
    assert r["mde"] == pytest.approx((stats.t.ppf(0.975, 4) + stats.t.ppf(0.8, 4)) * r["se"])
    found = 0
    for i in range(20):
        arm, base, ones = _simulated(rng, delta=2 * r["mde"])
        d = paired_difference(arm, ones, base, ones, n_boot=300, seed=i)
        found += d["low"] > 0
    assert found >= 17, found  # power at twice the MDE is well above 80 %
