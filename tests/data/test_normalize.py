import json
import math

import numpy as np
import pytest
import torch

from precip_cvae.data.normalize import (
    LOG1P_MAX,
    TARGET_STD_FLOOR,
    Normalization,
    finalize_target_stats,
    target_to_mm_per_day,
    target_to_normalized,
    threshold_to_normalized,
)
from precip_cvae.errors import InputError


def test_round_trip_mm_normalized_mm():
    rng = np.random.default_rng(1)
    pr = np.where(rng.random((50, 7, 6)) < 0.5, 0.0, rng.gamma(0.6, 10.0, (50, 7, 6))).astype(np.float32)
    mean = rng.uniform(0.2, 1.5, (7, 6)).astype(np.float32)
    std = rng.uniform(0.3, 1.2, (7, 6)).astype(np.float32)
    back = target_to_mm_per_day(target_to_normalized(pr, mean, std), mean, std)
    np.testing.assert_allclose(back, pr, rtol=2e-6, atol=1e-4)  # below 1e-4 mm/day: round-off, 0


def test_hand_computed_value_and_nan_and_negative():
    mean, std = np.array([[0.5]]), np.array([[2.0]])
    # log1p(e - 1) = 1 -> (1 - 0.5) / 2 = 0.25
    z = target_to_normalized(np.array([[[np.e - 1.0]], [[np.nan]], [[-3.0]]]), mean, std)
    assert np.isclose(z[0, 0, 0], 0.25, atol=1e-7)
    assert np.isnan(z[1, 0, 0])
    assert np.isclose(z[2, 0, 0], -0.25)  # negative precipitation is clipped to 0 mm/day
    assert target_to_mm_per_day(np.array([[-100.0]]), mean, std)[0, 0] == 0.0


def test_threshold_equivalent_holds_pixel_by_pixel():
    rng = np.random.default_rng(2)
    pr = rng.gamma(0.5, 8.0, (200, 4, 3))
    mean = rng.uniform(0, 2, (4, 3))
    std = rng.uniform(0.2, 2, (4, 3))
    z = target_to_normalized(pr, mean, std)
    zt = threshold_to_normalized(10.0, mean, std)
    away = np.abs(pr - 10.0) > 1e-3  # float32 rounding right at the threshold aside
    assert np.array_equal((z >= zt)[away], (pr >= 10.0)[away])


def test_finalize_stats_hand_values_and_floor():
    logs = np.log1p(np.array([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]))  # two pixels over 3 days
    count = np.array([3.0, 3.0])
    mean, std = finalize_target_stats(count, logs.sum(1), (logs**2).sum(1))
    np.testing.assert_allclose(mean, logs.mean(1), rtol=1e-6)
    np.testing.assert_allclose(std[0], logs[0].std(), rtol=1e-5)
    assert std[1] == np.float32(TARGET_STD_FLOOR)  # constant pixel: floored
    mean0, std0 = finalize_target_stats(np.zeros(1), np.zeros(1), np.zeros(1))
    assert mean0[0] == 0.0 and std0[0] == 1.0  # no data: identity transform


def test_dry_pixel_survives_the_float32_round_trip_as_exact_zero():
    mean = np.array([[0.8137]], np.float32)
    std = np.array([[1.2911]], np.float32)
    z = target_to_normalized(np.zeros((1, 1, 1)), mean, std)  # float32, a few ulps off the exact value
    assert target_to_mm_per_day(z, mean, std)[0, 0, 0] == 0.0


def _normalization(seed: int = 3, shape=(5, 4)) -> Normalization:
    rng = np.random.default_rng(seed)
    return Normalization(rng.uniform(0.2, 1.5, shape), rng.uniform(0.3, 1.2, shape))


def test_numpy_and_torch_inverses_agree_and_share_the_cap():
    norm = _normalization()
    z = np.random.default_rng(4).normal(0, 2, (3, 5, 4)).astype(np.float32)
    z[0, 0, 0] = 1e4  # an exploding pixel: capped at expm1(LOG1P_MAX), about 3000 mm/day, in both
    mm_np = norm.to_mm(z)
    mm_t = norm.to_mm(torch.from_numpy(z).double()).numpy()
    assert mm_np[0, 0, 0] == pytest.approx(math.expm1(LOG1P_MAX), rel=1e-5) == pytest.approx(3000.0, rel=1e-5)
    wet = mm_np > 1e-3
    np.testing.assert_allclose(mm_np[wet], mm_t[wet], rtol=1e-5)
    # to_z in torch is the float64 reference formula
    back = norm.to_z(torch.from_numpy(mm_t)).numpy()
    ref = (np.log1p(mm_t) - norm.mean.astype(np.float64)) / norm.std.astype(np.float64)
    np.testing.assert_allclose(back, ref, rtol=1e-12)


def test_dry_value_and_threshold_equivalent():
    norm = _normalization()
    assert (norm.to_mm(norm.dry_z) == 0.0).all()
    z10 = norm.threshold_z(10.0)
    np.testing.assert_allclose(norm.to_mm(z10), 10.0, rtol=1e-5)


def test_state_dict_round_trip_and_differences():
    norm = _normalization()
    again = Normalization.from_state_dict(norm.state_dict())
    assert again.differences(norm) == [] and again.log1p_max == norm.log1p_max
    other_std = Normalization(norm.mean, norm.std * 1.01)
    assert any("std" in d for d in other_std.differences(norm))
    assert any("cap" in d for d in Normalization(norm.mean, norm.std, 5.0).differences(norm))
    assert "grid" in Normalization(np.zeros((2, 2)), np.ones((2, 2))).differences(norm)[0]


def test_save_and_load_a_prepared_datasets_files(tmp_path):
    norm = _normalization()
    info = norm.save(tmp_path)
    (tmp_path / "normalization.json").write_text(json.dumps({"target": info}))
    assert Normalization.load(tmp_path).differences(norm) == []
    (tmp_path / "normalization.json").write_text(json.dumps({"target": {**info, "log1p_max": 4.0}}))
    assert Normalization.load(tmp_path).log1p_max == 4.0
    (tmp_path / Normalization.STD_FILE).unlink()
    with pytest.raises(InputError, match="target_log1p_std.npy: file not found"):
        Normalization.load(tmp_path)
