"""The downstream losses by hand: intensity-weighted MAE, pinball, CRPS from quantiles, DenseWeight."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from precip_cvae.data.normalize import Normalization
from precip_cvae.downstream.losses import (
    crps_from_quantiles,
    density_weights,
    mae,
    pinball,
    quantile_weights,
    weighted_mae,
)


def _field(values, shape=(1, 1, 1, 3)) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def test_weighted_mae_by_hand():
    # mean 0, std 1: pr_mm = expm1(target). 5 mm -> w 1 (floor), 30 mm -> 3, 200 mm -> 10 (cap).
    target = _field([math.log1p(5.0), math.log1p(30.0), math.log1p(200.0)])
    pred = torch.zeros_like(target)
    mask = torch.ones_like(target, dtype=torch.bool)
    norm = Normalization(np.zeros((1, 3)), np.ones((1, 3)))
    expected = (1 * math.log1p(5.0) + 3 * math.log1p(30.0) + 10 * math.log1p(200.0)) / 3
    assert weighted_mae(pred, target, mask, norm).item() == pytest.approx(expected, rel=1e-5)
    # The weight follows the observation, not the prediction; masked pixels (even NaN) do not count.
    target_nan = target.clone()
    target_nan[..., 2] = float("nan")
    mask[..., 2] = False
    pred = pred.requires_grad_()
    loss = weighted_mae(pred, target_nan, mask, norm)
    loss.backward()
    assert loss.item() == pytest.approx((math.log1p(5.0) + 3 * math.log1p(30.0)) / 2, rel=1e-5)
    assert torch.isfinite(pred.grad).all() and pred.grad[..., 2].item() == 0.0
    # Other scale and bounds: w = clip(pr / 20, 0.5, 2) = 0.25 -> 0.5, 1.5, 10 -> 2.
    loss = weighted_mae(
        torch.zeros_like(target), target, torch.ones_like(mask), norm, w_min=0.5, w_max=2.0, scale_mm=20.0
    )
    expected = (0.5 * math.log1p(5.0) + 1.5 * math.log1p(30.0) + 2 * math.log1p(200.0)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_mae_with_mask_and_sample_weights():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 1, 1, 2)
    target = torch.tensor([[0.0, 0.0], [0.0, float("nan")]]).reshape(2, 1, 1, 2)
    mask = torch.tensor([[True, True], [True, False]]).reshape(2, 1, 1, 2)
    assert mae(pred, target, mask).item() == pytest.approx((1 + 2 + 3) / 3)
    # Sample weights (1, 2): (1 + 2 + 2 * 3) / (2 + 2 * 1) valid-pixel weight.
    assert mae(pred, target, mask, torch.tensor([1.0, 2.0])).item() == pytest.approx(9 / 4)
    # Weights multiply weighted_mae's terms the same way (w_int = 1 here).
    norm = Normalization(np.zeros((1, 2)), np.ones((1, 2)))
    assert weighted_mae(pred, target, mask, norm, torch.tensor([1.0, 2.0])).item() == pytest.approx(9 / 4)
    assert mae(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_pinball_by_hand():
    mask = torch.ones(1, 1, 1, 2, dtype=torch.bool)
    target = torch.zeros(1, 1, 1, 2)
    pred = torch.tensor([-2.0, 2.0]).reshape(1, 1, 1, 2)  # u = +2 -> 0.9 * 2 = 1.8; u = -2 -> 0.1 * 2 = 0.2
    assert pinball(pred, target, mask, [0.9]).item() == pytest.approx((1.8 + 0.2) / 2)
    assert pinball(pred[..., :1], target[..., :1], mask[..., :1], [0.9]).item() == pytest.approx(1.8)
    assert pinball(pred[..., 1:], target[..., 1:], mask[..., 1:], [0.9]).item() == pytest.approx(0.2)
    # Two quantiles averaged: tau 0.5 on u = +2 gives 1.0, tau 0.9 gives 1.8 -> 1.4.
    pred2 = torch.tensor([-2.0, -2.0]).reshape(1, 2, 1, 1)
    assert pinball(pred2, target[..., :1], mask[..., :1], [0.5, 0.9]).item() == pytest.approx(1.4)
    # Per-sample weights: sample losses 1.8 and 0.2 with weights 3 and 1 -> (5.4 + 0.2) / 4.
    pred_b = torch.tensor([-2.0, 2.0]).reshape(2, 1, 1, 1)
    target_b, mask_b = torch.zeros(2, 1, 1, 1), torch.ones(2, 1, 1, 1, dtype=torch.bool)
    assert pinball(pred_b, target_b, mask_b, [0.9], torch.tensor([3.0, 1.0])).item() == pytest.approx(5.6 / 4)
    with pytest.raises(ValueError):
        pinball(pred2, target[..., :1], mask[..., :1], [0.5])


def test_crps_from_quantiles_by_hand():
    # Even levels (0.25, 0.75) -> uniform weights. q = (1, 3), y = 2: rho = 0.25 * 1 and 0.25 * 1 -> CRPS 2 * 0.25.
    pred = np.array([1.0, 3.0]).reshape(1, 2, 1, 1)
    obs = np.array([2.0]).reshape(1, 1, 1, 1)
    mask = np.ones((1, 1, 1, 1), bool)
    assert crps_from_quantiles(pred, obs, (0.25, 0.75), mask) == pytest.approx(0.5)
    # Uneven (0.5, 0.9, 0.99): trapezoid weights (0.2, 0.245, 0.045) / 0.49. All q = 0, y = 10 -> rho = 10 tau.
    w = np.array([0.2, 0.245, 0.045]) / 0.49
    assert quantile_weights((0.5, 0.9, 0.99)) == pytest.approx(w)
    pred = torch.zeros(1, 3, 1, 2)
    obs = torch.tensor([10.0, float("nan")]).reshape(1, 1, 1, 2)  # second pixel masked
    mask = torch.tensor([True, False]).reshape(1, 1, 1, 2)
    expected = 2 * float(w @ (10 * np.array([0.5, 0.9, 0.99])))
    assert crps_from_quantiles(pred, obs, (0.5, 0.9, 0.99), mask) == pytest.approx(expected)
    uniform = 2 * 10 * np.mean([0.5, 0.9, 0.99])
    assert crps_from_quantiles(pred, obs, (0.5, 0.9, 0.99), mask, rule="uniform") == pytest.approx(uniform)
    # Order of the levels does not matter as long as channels follow it.
    assert quantile_weights((0.9, 0.5, 0.99)) == pytest.approx(w[[1, 0, 2]])


def test_density_weights():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(2.0, 0.5, 500), [15.0, 20.0]])  # two rare wet days
    weights = density_weights(values)
    assert weights.shape == values.shape
    assert weights.mean() == pytest.approx(1.0)
    assert weights[-2:].min() > np.median(weights[:-2])
    common = np.argmin(np.abs(values - 2.0))
    assert weights[-1] > weights[common]
    assert weights.min() > 0
    np.testing.assert_array_equal(density_weights(values, alpha=0.0), np.ones(values.size))
    np.testing.assert_array_equal(density_weights(np.full(5, 3.0)), np.ones(5))  # constant: no KDE
    # Weaker alpha: the weights spread less.
    assert density_weights(values, alpha=0.5).std() < weights.std()
