"""Metrics: hand-computed examples, agreement with scoringrules, statistical sanity, and the streaming accumulator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from precip_cvae import metrics as m

# --------------------------------------------------------------------------------------------------------------------
# deterministic


def test_deterministic_scores_by_hand():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    obs = np.array([[0.0, 2.0], [5.0, np.nan]])  # the NaN pixel never counts
    mask = np.ones((2, 2), bool)
    # errors on the valid pixels: +1, 0, -2
    assert m.mae(pred, obs, mask) == pytest.approx(1.0)
    assert m.rmse(pred, obs, mask) == pytest.approx(math.sqrt(5 / 3))
    assert m.mae_tail(pred, obs, mask, 2.0) == pytest.approx(1.0)  # obs >= 2: errors 0 and 2
    assert m.mass_bias(pred, obs, mask) == pytest.approx(2.0 - 7 / 3)  # means (1+2+3)/3 and (0+2+5)/3
    mask[0, 0] = False
    assert m.mae(pred, obs, mask) == pytest.approx(1.0)  # errors 0, 2
    assert m.mass_bias(pred, obs, mask) == pytest.approx(2.5 - 3.5)
    assert math.isnan(m.mae_tail(pred, obs, mask, 100.0))


def test_mass_bias_is_a_mean_over_fields():
    obs = np.zeros((2, 1, 2))
    pred = np.array([[[1.0, 3.0]], [[0.0, 0.0]]])
    mask = np.array([[True, False]])
    # field 1: 1 - 0 on the one valid pixel; field 2: 0
    assert m.mass_bias(pred, obs, mask) == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------------------------
# CRPS


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


def _rainy(rng, shape):
    """Rounded gamma intensities with 40 % exact zeros: plenty of ties."""
    return np.where(rng.random(shape) < 0.4, 0.0, rng.gamma(0.7, 6.0, shape)).round(1)


@pytest.mark.parametrize("fair,estimator", [(True, "fair"), (False, "nrg")])
def test_crps_matches_scoringrules(fair, estimator):
    sr = pytest.importorskip("scoringrules")
    rng = np.random.default_rng(3)
    ens, obs = _rainy(rng, (7, 9, 11)), _rainy(rng, (9, 11))
    ens[:, 0, 0] = obs[0, 0]  # all members tie with the observation
    expected = sr.crps_ensemble(obs, ens, m_axis=0, estimator=estimator)
    np.testing.assert_allclose(m.crps_ensemble(ens, obs, fair=fair), expected, rtol=0, atol=1e-8)
    # several days: members on axis 1
    ens4, obs3 = _rainy(rng, (3, 5, 6, 4)), _rainy(rng, (3, 6, 4))
    expected = sr.crps_ensemble(obs3, ens4, m_axis=1, estimator=estimator)
    np.testing.assert_allclose(m.crps_ensemble(ens4, obs3, fair=fair), expected, rtol=0, atol=1e-8)
    t = 4.0
    expected = sr.twcrps_ensemble(obs, ens, m_axis=0, v_func=lambda z: np.maximum(z, t), estimator=estimator)
    np.testing.assert_allclose(m.twcrps_ensemble(ens, obs, t, fair=fair), expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("fair", [True, False])
def test_twcrps_equals_the_chaining_definition_by_brute_force(fair):
    rng = np.random.default_rng(4)
    K, t = 6, 3.0
    ens, obs = _rainy(rng, (K, 5, 4)), _rainy(rng, (5, 4))
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
    ens, obs = _rainy(rng, (3, 5, 5)), _rainy(rng, (5, 5))
    # pool 4 on 5 x 5: only the top-left block has >= 8 of 16 pixels; it equals pooling the 4 x 4 corner
    expected = m.pooled_crps(ens[:, :4, :4], obs[:4, :4], None, 4, "max")
    assert m.pooled_crps(ens, obs, None, 4, "max") == pytest.approx(expected)


# --------------------------------------------------------------------------------------------------------------------
# rank histogram, spread-skill


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


# --------------------------------------------------------------------------------------------------------------------
# spectra


def test_rapsd_of_a_cosine_by_hand():
    x = np.arange(8)
    field = np.tile(np.cos(2 * np.pi * 2 * x / 8), (8, 1))  # 2 cycles per 8 px along x
    freqs, power = m.rapsd(field)
    np.testing.assert_allclose(freqs, [1 / 8, 2 / 8, 3 / 8, 4 / 8])
    # |F|^2/(HW) = 32^2/64 = 16 at (0, +-2); bin 2 holds 12 coefficients: (0,+-2), (+-2,0), (+-1,+-2), (+-2,+-1)
    np.testing.assert_allclose(power, [0.0, 32 / 12, 0.0, 0.0], atol=1e-12)
    # a missing pixel is filled with the field's mean (0 here): nothing changes but that pixel
    with_gap = field.copy()
    with_gap[3, 3] = np.nan
    filled = field.copy()
    filled[3, 3] = field[np.isfinite(with_gap)].mean()
    np.testing.assert_allclose(m.rapsd(with_gap)[1], m.rapsd(filled)[1], rtol=1e-12, atol=1e-12)


def _slope(freqs, power):
    return np.polyfit(np.log10(freqs), np.log10(power), 1)[0]


def test_rapsd_of_white_noise_is_flat():
    rng = np.random.default_rng(21)
    freqs, power = m.rapsd(rng.normal(0.0, 2.0, (8, 128, 128)))
    power = power.mean(axis=0)  # mean over fields before the log, to avoid the log's bias at few coefficients
    assert _slope(freqs, power) == pytest.approx(0.0, abs=0.15)
    assert power.mean() == pytest.approx(4.0, rel=0.05)  # white noise of variance 4 has power 4


def test_rapsd_recovers_a_power_law():
    rng = np.random.default_rng(22)
    n = 128
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij"))
    amplitude = np.where(f > 0, f, 1.0) ** -1.5  # power ~ f^-3
    amplitude[0, 0] = 0.0
    fields = np.fft.ifft2(np.fft.fft2(rng.normal(size=(8, n, n))) * amplitude).real
    freqs, power = m.rapsd(fields)
    assert _slope(freqs, power.mean(axis=0)) == pytest.approx(-3.0, abs=0.3)


def test_spectrum_log_ratio_by_hand():
    freqs = np.array([0.05, 0.1, 0.2, 0.3, 0.5])
    obs = np.ones(5)
    sim = np.array([10.0, 1.0, 100.0, 0.1, 0.1])
    bands = [(0.0, 1 / 16), (1 / 16, 1 / 4), (1 / 4, np.inf), (0.6, 0.7)]
    out = m.spectrum_log_ratio(sim, obs, freqs, bands)
    assert out[:3] == pytest.approx([1.0, 1.0, -1.0])  # (0 + 2)/2 in the medium band
    assert math.isnan(out[3])


# --------------------------------------------------------------------------------------------------------------------
# FSS


def test_fss_limits_and_hand_examples():
    rng = np.random.default_rng(31)
    field = _rainy(rng, (20, 20))
    assert m.fss(field, field, 2.0, 5) == pytest.approx(1.0)
    a = np.zeros((6, 6))
    b = np.zeros((6, 6))
    a[0, 0] = b[5, 5] = 10.0
    assert m.fss(a, b, 1.0, 1) == pytest.approx(0.0)
    # window 1: events pred {(0,0)}, obs {(0,0), (0,1)}: sum (d^2) = 1, reference (1+1) + (0+1) = 3
    pred = np.array([[5.0, 0.0], [0.0, 0.0]])
    obs = np.array([[5.0, 5.0], [0.0, 0.0]])
    assert m.fss(pred, obs, 1.0, 1) == pytest.approx(2 / 3)
    # the pixel (0,1) masked out: the fields agree on the rest
    assert m.fss(pred, obs, 1.0, 1, mask=np.array([[True, False], [True, True]])) == pytest.approx(1.0)
    # probability 0.5 where obs has its event: (0.5 - 1)^2 = 0.25 over 0.25 + 1
    prob = np.array([[0.5, 0.0], [0.0, 0.0]])
    assert m.fss(prob, np.array([[5.0, 0.0], [0.0, 0.0]]), 1.0, 1, probabilistic=True) == pytest.approx(0.8)


def test_fss_window_3_by_hand():
    pred = np.zeros((3, 3))
    obs = np.zeros((3, 3))
    pred[1, 1] = obs[0, 0] = 1.0
    # 3 x 3 box, zero padding: pred fractions 1/9 everywhere; obs 1/9 on the 4 pixels around (0,0), 0 elsewhere
    # sum (d^2) = 5/81; reference 9/81 + 4/81
    assert m.fss(pred, obs, 0.5, 3) == pytest.approx(1 - 5 / 13)


def test_fss_over_several_fields():
    pred = np.zeros((2, 2, 2))
    obs = np.zeros((2, 2, 2))
    pred[0, 0, 0] = obs[0, 0, 0] = obs[0, 0, 1] = 1.0  # field 0: 2/3 (as above)
    pred[1, 1, 1] = obs[1, 0, 0] = 1.0  # field 1: disjoint, 0
    assert m.fss(pred, obs, 0.5, 1) == pytest.approx((2 / 3 + 0) / 2)
    assert m.fss(pred, obs, 0.5, 1, aggregate="sums") == pytest.approx(1 - (1 + 2) / (3 + 2))


# --------------------------------------------------------------------------------------------------------------------
# extremes


def test_quantile_bias_by_hand():
    out = m.quantile_bias(np.arange(101.0), 2 * np.arange(101.0), qs=(0.95, 0.999))
    assert set(out) == {"P95", "P99.9"}
    assert out["P95"] == pytest.approx({"pred": 95.0, "obs": 190.0, "bias": -95.0, "ratio": 0.5})
    assert out["P99.9"]["bias"] == pytest.approx(99.9 - 199.8)


def test_contingency_csi_sedi_by_hand():
    pred = np.array([[3.0, 0.0], [2.0, 5.0]])
    obs = np.array([[3.0, 3.0], [0.0, 0.0]])
    table = m.contingency(pred, obs, 2.0, None)
    assert table == {"hits": 1, "misses": 1, "false_alarms": 2, "correct_negatives": 0}
    assert m.csi(table) == pytest.approx(1 / 4)
    assert math.isnan(m.sedi(table))  # F = 2/2 = 1
    table = {"hits": 20, "misses": 10, "false_alarms": 30, "correct_negatives": 940}
    assert m.csi(table) == pytest.approx(20 / 60)
    # H = 2/3, F = 3/97: ln F = -3.476099, ln H = -0.405465, ln(1-F) = -0.031416, ln(1-H) = -1.098612
    # SEDI = (-3.476099 + 0.405465 + 0.031416 - 1.098612) / (-3.476099 - 0.405465 - 0.031416 - 1.098612)
    assert m.sedi(table) == pytest.approx(-4.137831 / -5.011593, abs=1e-6)
    assert math.isnan(m.sedi({**table, "misses": 0}))  # H = 1
    assert math.isnan(m.sedi({**table, "false_alarms": 0}))  # F = 0


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
    values = _rainy(rng, 300_000) + rng.gamma(0.7, 6.0, 300_000) * (rng.random(300_000) < 0.5)
    h = m.LogHistogram()
    for chunk in np.array_split(values, 7):
        h.add(chunk)
    for q in (0.3, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        assert h.quantile(q) == pytest.approx(np.quantile(values, q), rel=2e-3, abs=1e-3), q
    assert math.isnan(m.LogHistogram().quantile(0.5))


# --------------------------------------------------------------------------------------------------------------------
# streaming


def _days(n_days=6, K=4, H=20, W=24, seed=51):
    rng = np.random.default_rng(seed)
    ens = _rainy(rng, (n_days, K, H, W)) * rng.gamma(4.0, 0.25, (n_days, 1, 1, 1))
    obs = _rainy(rng, (n_days, H, W)) * rng.gamma(4.0, 0.25, (n_days, 1, 1))
    obs[-1, 5:8, 3] = np.nan  # a station gap
    mask = np.ones((H, W), bool)
    mask[:6, :5] = False  # "sea"
    ens[:, :, ~mask] = np.nan
    obs[:, ~mask] = np.nan
    thresholds = {"P95": 8.0, "P99": 15.0, "P99.9": 25.0}
    return ens, obs, mask, thresholds


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(np.asarray(a[key], float), np.asarray(b[key], float), rtol=1e-12, err_msg=key)


def test_ensemble_scores_merge_equals_one_pass():
    ens, obs, mask, thresholds = _days()
    one = m.EnsembleScores(4, thresholds, rng_seed=7)
    for e, o in zip(ens, obs, strict=True):
        one.accumulate(e, o, mask)
    first, second = m.EnsembleScores(4, thresholds, rng_seed=7), m.EnsembleScores(4, thresholds, rng_seed=7)
    for e, o in zip(ens[4:], obs[4:], strict=True):  # out of order, too
        first.accumulate(e, o, mask)
    for e, o in zip(ens[:4], obs[:4], strict=True):
        second.accumulate(e, o, mask)
    first.merge(second)
    _assert_same(one.compute(), first.compute())
    empty = m.EnsembleScores(4, thresholds, rng_seed=7)
    empty.merge(one)
    _assert_same(one.compute(), empty.compute())
    with pytest.raises(ValueError):
        one.merge(m.EnsembleScores(4, thresholds, pools=(2,)))


def test_ensemble_scores_agree_with_the_functions():
    ens, obs, mask, thresholds = _days()
    scores = m.EnsembleScores(4, thresholds)
    for e, o in zip(ens, obs, strict=True):
        scores.accumulate(e, o, mask)
    out = scores.compute()
    json.dumps(out)
    valid = mask & np.isfinite(obs)
    assert out["days"] == 6 and out["pixels"] == valid.sum() == sum(out["rank_histogram"])
    assert out["CRPS"] == pytest.approx(m.crps_mean(ens, obs, mask), rel=1e-12)
    tw = m.twcrps_ensemble(ens, obs, thresholds["P95"], mask)
    assert out["twCRPS_P95"] == pytest.approx(np.nanmean(tw), rel=1e-12)
    for pool in (4, 16):
        for how in ("mean", "max"):
            expected = m.pooled_crps(ens, obs, mask, pool, how)
            assert out[f"CRPS_pool{pool}_{how}"] == pytest.approx(expected, rel=1e-12)
    median = np.median(ens, axis=1)
    assert out["MAE_all"] == pytest.approx(m.mae(median, obs, mask), rel=1e-12)
    assert out["RMSE_all"] == pytest.approx(m.rmse(median, obs, mask), rel=1e-12)
    assert out["MAE_tail"] == pytest.approx(m.mae_tail(median, obs, mask, thresholds["P95"]), rel=1e-12)
    assert out["mass_bias"] == pytest.approx(m.mass_bias(median, obs, mask), rel=1e-12)
    member_mae = np.mean([m.mae(ens[:, k], obs, mask) for k in range(4)])
    assert out["MAE_member"] == pytest.approx(member_mae, rel=1e-12)
    ss = m.spread_skill(ens, obs, mask)
    assert [out["spread"], out["skill"], out["spread_skill_ratio"]] == pytest.approx(
        [ss["spread"], ss["skill"], ss["ratio"]], rel=1e-12
    )
    for key in ("P95", "P99", "P99.9"):
        t = thresholds[key]
        tables = [m.contingency(ens[:, k], obs, t, mask) for k in range(4)]
        table = {cell: sum(tb[cell] for tb in tables) for cell in tables[0]}
        assert out[f"CSI_{key}"] == pytest.approx(m.csi(table), rel=1e-12, nan_ok=True)
        assert out[f"SEDI_{key}"] == pytest.approx(m.sedi(table), rel=1e-12, nan_ok=True)
        prob = (ens >= t).mean(axis=1)
        for w in (1, 5, 11):
            expected = m.fss(prob, obs, t, w, mask, probabilistic=True, aggregate="sums")
            assert out[f"FSS_{key}_w{w}"] == pytest.approx(expected, rel=1e-12)
    quantiles = m.quantile_bias(ens.transpose(1, 0, 2, 3)[:, valid], obs[valid])
    for label, q in quantiles.items():
        assert out[f"quantile_sim_{label}"] == pytest.approx(q["pred"], rel=2e-3, abs=1e-3)
        assert out[f"quantile_obs_{label}"] == pytest.approx(q["obs"], rel=2e-3, abs=1e-3)
    assert set(quantiles) == {"P95", "P99", "P99.9"}
    assert out["wet_day_frequency_sim"] == pytest.approx(m.wet_day_frequency(ens, valid[:, None]))
    assert out["wet_day_frequency_obs"] == pytest.approx(m.wet_day_frequency(obs, mask))
    assert out["Rx1day_bias"] == pytest.approx(m.rx1day_bias(ens, obs, mask), rel=1e-12)
    spectra = m.rapsd(np.where(valid[:, None], np.concatenate([obs[:, None], ens], axis=1), np.nan))[1]
    np.testing.assert_allclose(out["rapsd_obs"], spectra[:, 0].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(out["rapsd_sim"], spectra[:, 1:].mean(axis=(0, 1)), rtol=1e-12)
    assert len(out["spectrum_log_ratio"]) == 3 and all(np.isfinite(out["spectrum_log_ratio"]))


def test_ensemble_scores_json_and_edge_cases():
    ens, obs, mask, thresholds = _days(n_days=2)
    scores = m.EnsembleScores(4, thresholds)
    assert json.loads(json.dumps(scores.compute()))["days"] == 0  # nothing yet: NaNs, but serializable
    scores.accumulate(ens[0], obs[0], np.zeros_like(mask))  # a day without a valid pixel
    scores.accumulate(ens[1], obs[1], mask)
    out = json.loads(json.dumps(scores.compute()))
    assert out["days"] == 2 and out["CRPS"] == pytest.approx(m.crps_mean(ens[1], obs[1], mask), rel=1e-12)
    assert all(isinstance(v, int | float | list) for v in out.values())
    with pytest.raises(ValueError):
        scores.accumulate(ens[0, :3], obs[0], mask)
    with pytest.raises(ValueError):
        m.EnsembleScores(4, {"P95": 1.0})
