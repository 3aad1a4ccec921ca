"""CRPS (fair, threshold-weighted, pooled) by hand and against scoringrules; rank histogram; spread-skill."""

from __future__ import annotations

import math

import numpy as np
import pytest

from precip_cvae import metrics as m
from tests.cases import rainy


def test_crps_by_hand():
    ens = np.array([0.0, 2.0, 4.0])[:, None, None]  # (K=3, 1, 1)
    obs = np.array([[1.0]])
    # mean |x - y| = (1 + 1 + 3)/3 = 5/3; sum_{i,j} |x_i - x_j| = 2 (2 + 4 + 2) = 16
    assert m.crps_ensemble(ens, obs)[0, 0] == pytest.approx(5 / 3 - 16 / (2 * 3 * 2))  # fair: 1/3
    assert m.crps_ensemble(ens, obs, fair=False)[0, 0] == pytest.approx(5 / 3 - 16 / (2 * 9))  # 7/9
    # chained at t = 3: v(x) = 3, 3, 4 and v(y) = 3: mean |.| = 1/3, pair sum 4
    assert m.twcrps_ensemble(ens, obs, 3.0)[0, 0] == pytest.approx(0.0, abs=1e-12)
    assert m.twcrps_ensemble(ens, obs, 3.0, fair=False)[0, 0] == pytest.approx(1 / 3 - 4 / 18)


def test_crps_masks_and_means():
    ens = np.stack([np.array([[0.0, 1.0], [2.0, np.nan]]), np.array([[2.0, 1.0], [2.0, 5.0]])])  # K=2
    obs = np.array([[1.0, 1.0], [np.nan, 1.0]])
    mask = np.array([[True, True], [True, True]])
    c = m.crps_ensemble(ens, obs, mask)
    # pixel (0,0): members 0, 2, obs 1: mean |x-y| = 1, pair sum 2*2 = 4 -> 1 - 4/4 = 0; pixel (0,1): exact, 0
    np.testing.assert_allclose(c[0], [0.0, 0.0], atol=1e-12)
    assert np.isnan(c[1]).all()  # NaN obs; NaN member
    ens[:, 0, 1] = [3.0, 5.0]  # mean |x-y| = 3, pair sum 4 -> 3 - 1 = 2
    assert m.crps_mean(ens, obs, mask) == pytest.approx(1.0)
    mask[0, 0] = False
    assert m.crps_mean(ens, obs, mask) == pytest.approx(2.0)
    assert np.isnan(m.crps_ensemble(ens, obs, mask)[0, 0])


@pytest.mark.parametrize("fair,estimator", [(True, "fair"), (False, "nrg")])
def test_crps_matches_scoringrules(fair, estimator):
    sr = pytest.importorskip("scoringrules")
    rng = np.random.default_rng(3)
    ens, obs = rainy(rng, (7, 9, 11)), rainy(rng, (9, 11))
    ens[:, 0, 0] = obs[0, 0]  # all members tie with the observation
    expected = sr.crps_ensemble(obs, ens, m_axis=0, estimator=estimator)
    np.testing.assert_allclose(m.crps_ensemble(ens, obs, fair=fair), expected, rtol=0, atol=1e-8)
    # several days: members on axis 1
    ens4, obs3 = rainy(rng, (3, 5, 6, 4)), rainy(rng, (3, 6, 4))
    expected = sr.crps_ensemble(obs3, ens4, m_axis=1, estimator=estimator)
    np.testing.assert_allclose(m.crps_ensemble(ens4, obs3, fair=fair), expected, rtol=0, atol=1e-8)
    t = 4.0
    expected = sr.twcrps_ensemble(obs, ens, m_axis=0, v_func=lambda z: np.maximum(z, t), estimator=estimator)
    np.testing.assert_allclose(m.twcrps_ensemble(ens, obs, t, fair=fair), expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("fair", [True, False])
def test_twcrps_equals_the_chaining_definition_by_brute_force(fair):
    rng = np.random.default_rng(4)
    K, t = 6, 3.0
    ens, obs = rainy(rng, (K, 5, 4)), rainy(rng, (5, 4))
    v = np.maximum(ens, t)
    vy = np.maximum(obs, t)
    pairs = sum(np.abs(v[i] - v[j]) for i in range(K) for j in range(K))
    expected = np.abs(v - vy).mean(axis=0) - pairs / (2 * K * (K - 1) if fair else 2 * K * K)
    np.testing.assert_allclose(m.twcrps_ensemble(ens, obs, t, fair=fair), expected, rtol=0, atol=1e-12)


def test_pooled_crps_by_hand():
    ens = np.array([[[0.0, 2.0], [2.0, 0.0]], [[4.0, 4.0], [4.0, 4.0]]])  # block means 1, 4; maxima 2, 4
    obs = np.array([[1.0, 1.0], [1.0, 5.0]])  # mean 2, max 5
    mask = np.ones((2, 2), bool)
    # mean: members 1, 4 vs 2: mean |x-y| = 1.5, pair sum 2*3 = 6: fair 1.5 - 6/4 = 0, nrg 1.5 - 6/8
    assert m.pooled_crps(ens, obs, mask, 2, "mean") == pytest.approx(0.0, abs=1e-12)
    assert m.pooled_crps(ens, obs, mask, 2, "mean", fair=False) == pytest.approx(0.75)
    # max: members 2, 4 vs 5: mean |x-y| = 2, pair sum 4: fair 2 - 1, nrg 2 - 0.5
    assert m.pooled_crps(ens, obs, mask, 2, "max") == pytest.approx(1.0)
    assert m.pooled_crps(ens, obs, mask, 2, "max", fair=False) == pytest.approx(1.5)
    # 3 of 4 pixels valid: kept, the maxima over the valid pixels are 2, 4 vs 1: mean |x-y| = 2, pair sum 4
    mask[1, 1] = False
    assert m.pooled_crps(ens, obs, mask, 2, "max") == pytest.approx((1 + 3) / 2 - 4 / 4)
    # 1 of 4 valid: fewer than half, dropped
    mask[:] = False
    mask[0, 0] = True
    assert math.isnan(m.pooled_crps(ens, obs, mask, 2, "mean"))


def test_pooled_crps_pads_edges_with_invalid_pixels():
    rng = np.random.default_rng(5)
    ens, obs = rainy(rng, (3, 5, 5)), rainy(rng, (5, 5))
    # pool 4 on 5 x 5: only the top-left block has >= 8 of 16 pixels; it equals pooling the 4 x 4 corner
    expected = m.pooled_crps(ens[:, :4, :4], obs[:4, :4], None, 4, "max")
    assert m.pooled_crps(ens, obs, None, 4, "max") == pytest.approx(expected)


def test_rank_histogram_by_hand_and_ties():
    ens = np.array([[1.0, 1.0, 1.0, 0.0], [2.0, 2.0, 2.0, 0.0]])[:, None, :]  # (K=2, 1, 4)
    obs = np.array([[5.0, 0.5, 1.5, 7.0]])
    mask = np.array([[True, True, True, False]])
    np.testing.assert_array_equal(m.rank_histogram(ens, obs, mask, rng=0), [1, 1, 1])
    # obs tied with both members (dry): each rank 0, 1, 2 equally likely
    ties = np.zeros((2, 100, 300))
    counts = m.rank_histogram(ties, np.zeros((100, 300)), None, rng=np.random.default_rng(1))
    np.testing.assert_allclose(counts / counts.sum(), [1 / 3] * 3, atol=0.01)
    # tied with one member of [0, 3]: rank 0 or 1
    one_tie = np.stack([np.zeros((100, 300)), np.full((100, 300), 3.0)])
    counts = m.rank_histogram(one_tie, np.zeros((100, 300)), None, rng=2)
    assert counts[2] == 0 and counts[0] / counts.sum() == pytest.approx(0.5, abs=0.01)


def test_rank_histogram_flatness_by_hand():
    out = m.rank_histogram_flatness([10, 20, 30])
    # expected 20 per bin: chi2 = (100 + 0 + 100)/20 = 10; 2 dof: p = exp(-10/2)
    assert out["chi2"] == pytest.approx(10.0)
    assert out["p"] == pytest.approx(math.exp(-5))
    assert out["rel_dev"] == pytest.approx(0.5)
    assert math.isnan(m.rank_histogram_flatness([0, 0, 0])["p"])


def test_spread_skill_by_hand():
    ens = np.array([[1.0, 0.0], [3.0, 0.0]])[:, None, :]  # (K=2, 1, 2)
    obs = np.array([[4.0, 0.0]])
    # variances (ddof=1) 2 and 0; ensemble-mean errors -2 and 0
    out = m.spread_skill(ens, obs, None)
    assert out["spread"] == pytest.approx(1.0)
    assert out["skill"] == pytest.approx(math.sqrt(2.0))
    assert out["ratio"] == pytest.approx(1 / math.sqrt(2) * math.sqrt(3 / 2))


def test_a_perfect_ensemble_is_calibrated():
    rng = np.random.default_rng(11)
    K = 8
    ens, obs = rng.gamma(2.0, 3.0, (K, 100, 200)), rng.gamma(2.0, 3.0, (100, 200))  # exchangeable, 20,000 pixels
    flat = m.rank_histogram_flatness(m.rank_histogram(ens, obs, None, rng=0))
    assert flat["p"] > 0.01
    assert m.spread_skill(ens, obs, None)["ratio"] == pytest.approx(1.0, abs=0.05)


def test_an_underdispersed_ensemble_is_u_shaped():
    rng = np.random.default_rng(12)
    K = 8
    ens, obs = 6.0 + 0.4 * (rng.gamma(2.0, 3.0, (K, 100, 200)) - 6.0), rng.gamma(2.0, 3.0, (100, 200))
    assert m.spread_skill(ens, obs, None)["ratio"] < 0.8
    counts = m.rank_histogram(ens, obs, None, rng=0)
    middle = counts[1:-1].mean()
    assert counts[0] > 2 * middle and counts[-1] > 2 * middle
    assert m.rank_histogram_flatness(counts)["p"] < 1e-6
