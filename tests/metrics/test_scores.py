"""EnsembleScores: merge equals one pass, agreement with the one-shot functions, JSON and edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from precip_cvae import metrics as m
from tests.cases import rainy


def _days(n_days=6, K=4, H=20, W=24, seed=51):
    rng = np.random.default_rng(seed)
    ens = rainy(rng, (n_days, K, H, W)) * rng.gamma(4.0, 0.25, (n_days, 1, 1, 1))
    obs = rainy(rng, (n_days, H, W)) * rng.gamma(4.0, 0.25, (n_days, 1, 1))
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


def _golden_days(n_days=6, K=16, H=40, W=36):
    """Days from uniform draws only (their streams are stable across numpy versions): ~45 % dry pixels, exponential
    amounts, a sea corner, a station gap and one missing member value."""
    rng = np.random.default_rng(20261125)

    def field(shape):
        u, v = rng.random(shape), rng.random(shape)
        return np.where(u < 0.45, 0.0, -np.log1p(-v) * 6.0)

    ens = field((n_days, K, H, W)).astype(np.float32)
    obs = field((n_days, H, W)).astype(np.float32)
    mask = np.ones((H, W), bool)
    mask[:7, :9] = False
    obs[2, 10:13, 4] = np.nan
    ens[3, 5, 20, 20] = np.nan
    return ens, obs, mask, {"P95": 12.0, "P99": 22.0, "P99.9": 35.0}


def test_ensemble_scores_equal_those_of_the_first_implementation():
    # ensemble_scores_reference.json holds what EnsembleScores computed on these days before the accumulators were
    # made faster (issue 12: twCRPS only where a value exceeds the threshold, block pooling by reduceat, the RAPSD
    # from the half-plane FFT); every score must stay within 1e-6 of it.
    ens, obs, mask, thresholds = _golden_days()
    scores = m.EnsembleScores(16, thresholds, rng_seed=3)
    for e, o in zip(ens, obs, strict=True):
        scores.accumulate(e, o, mask)
    got = scores.compute()
    with open(Path(__file__).with_name("ensemble_scores_reference.json")) as fh:
        reference = json.load(fh)
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_allclose(np.asarray(got[key], float), np.asarray(value, float), rtol=1e-6, atol=1e-12,
                                   err_msg=key)  # fmt: skip
