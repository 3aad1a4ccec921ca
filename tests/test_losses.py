"""Loss terms by hand, against a float64 reference and against a Monte-Carlo estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from precip_cvae.data.normalize import Normalization, target_to_normalized, threshold_to_normalized
from precip_cvae.losses import (
    LossWeights,
    cvae_loss,
    kl_divergence,
    kl_weight,
    masked_mean,
    mass_loss,
    reconstruction_terms,
)


def test_masked_mean_by_hand():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([True, True, True, False])
    assert float(masked_mean(values, mask)) == pytest.approx(2.0)
    assert float(masked_mean(values, torch.zeros(4, dtype=torch.bool))) == 0.0


def test_reconstruction_terms_by_hand():
    target = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    pred = torch.tensor([[[[0.5, 1.0], [1.0, 9.0]]]])
    mask = torch.tensor([[[[True, True], [True, False]]]])  # the last pixel is missing: never counts
    threshold = torch.full((2, 2), 1.5)
    mae_all, mae_ext = reconstruction_terms(pred, target, mask, threshold)
    assert float(mae_all) == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert float(mae_ext) == pytest.approx(1.0)  # only the pixel with target 2.0 is extreme and valid


def test_extreme_mask_is_taken_in_mm_per_day_pixel_by_pixel():
    # Two pixels with different climates: 12 mm/day is extreme at both, 8 mm/day at neither, although a
    # pooled comparison of normalized values would call the dry pixel's 8 mm/day extreme.
    mean = np.array([[0.2, 2.0]], np.float32)
    std = np.array([[0.5, 1.0]], np.float32)
    mm = np.array([[[[8.0, 12.0]]], [[[12.0, 8.0]]]], np.float32)
    z = torch.from_numpy(target_to_normalized(mm, mean, std))
    zt = torch.from_numpy(threshold_to_normalized(10.0, mean, std))
    assert float(z[0, 0, 0, 0]) > float(z[0, 0, 0, 1])  # normalized order disagrees with mm/day order
    pred = torch.zeros_like(z)
    mask = torch.ones_like(z, dtype=torch.bool)
    _, mae_ext = reconstruction_terms(pred, z, mask, zt)
    expected = (abs(float(z[0, 0, 0, 1])) + abs(float(z[1, 0, 0, 0]))) / 2
    assert float(mae_ext) == pytest.approx(expected, rel=1e-6)


def test_mass_loss_by_hand():
    norm = Normalization(np.zeros((1, 3)), np.ones((1, 3)))
    true_mm = torch.tensor([2.0, 4.0, 50.0])
    pred_mm = torch.tensor([1.0, 1.0, 0.0])
    target = torch.log1p(true_mm).view(1, 1, 1, 3)
    pred = torch.log1p(pred_mm).view(1, 1, 1, 3)
    land = torch.tensor([True, True, False]).view(1, 1, 1, 3)  # the third pixel is sea
    # |(2 + 4) - (1 + 1)| / 2 land pixels / scale 2 mm/day = 1.0
    assert float(mass_loss(pred, target, land, norm, 2.0)) == pytest.approx(1.0, rel=1e-6)


def test_mass_loss_is_the_same_on_any_grid():
    norm = Normalization(np.zeros((4, 4)), np.ones((4, 4)))
    target = torch.full((1, 1, 4, 4), math.log1p(3.0))
    pred = torch.full((1, 1, 4, 4), math.log1p(1.0))
    land = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    small = mass_loss(pred, target, land, norm, 1.0)
    big = mass_loss(pred.repeat(1, 1, 5, 5), target.repeat(1, 1, 5, 5), land.repeat(1, 1, 5, 5),
                    Normalization(np.zeros((20, 20)), np.ones((20, 20))), 1.0)  # fmt: skip
    assert float(small) == pytest.approx(float(big)) == pytest.approx(2.0)


def test_to_mm_never_negative_never_inf():
    z = torch.tensor([-50.0, 0.0, 1e6])
    mm = Normalization(np.zeros(3), np.ones(3)).to_mm(z)
    assert (mm >= 0).all() and torch.isfinite(mm).all()


@pytest.mark.parametrize("conditional", [False, True])
def test_kl_matches_monte_carlo_and_float64_formula(conditional):
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, generator=g, dtype=torch.float64)
    logvar = torch.randn(3, 4, generator=g, dtype=torch.float64) * 0.5
    pmu = torch.randn(3, 4, generator=g, dtype=torch.float64) if conditional else torch.zeros(3, 4, dtype=torch.float64)
    plv = (
        torch.randn(3, 4, generator=g, dtype=torch.float64) * 0.3
        if conditional
        else torch.zeros(3, 4, dtype=torch.float64)
    )
    kl, per_dim = kl_divergence(mu, logvar, pmu if conditional else None, plv if conditional else None)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(pmu, (0.5 * plv).exp())
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0).mean()
    assert float(kl) == pytest.approx(float(mc), abs=0.02)
    exact = torch.distributions.kl_divergence(q, p).sum(-1).mean()
    assert float(kl) == pytest.approx(float(exact), rel=1e-12)
    assert per_dim.shape == (4,)


def test_free_bits_floor_each_dimension():
    mu = torch.tensor([[0.0, 3.0]])
    logvar = torch.zeros(1, 2)
    kl, per_dim = kl_divergence(mu, logvar, free_bits=1.0)
    assert float(per_dim[0]) == 0.0 and float(per_dim[1]) == pytest.approx(4.5)
    assert float(kl) == pytest.approx(1.0 + 4.5)  # the unused dimension costs its free bits, the other its KL


def test_kl_warm_up_is_linear():
    assert kl_weight(0, 0.5, 10) == 0.0
    assert kl_weight(5, 0.5, 10) == pytest.approx(0.25)
    assert kl_weight(12.5, 0.5, 10) == 0.5
    assert kl_weight(0, 0.5, 0) == 0.5


def test_total_loss_combines_the_terms():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(2, 1, 3, 4, generator=g)
    out = {"recon": torch.randn(2, 1, 3, 4, generator=g), "mu": torch.randn(2, 5, generator=g),
           "logvar": torch.zeros(2, 5)}  # fmt: skip
    mask = torch.ones_like(target, dtype=torch.bool)
    norm, zt = Normalization(np.zeros((3, 4)), np.ones((3, 4))), torch.zeros(3, 4)
    w = LossWeights(lambda_base=1.0, lambda_ext=3.0, lambda_mass=0.1)
    terms = cvae_loss(out, target, mask, mask, zt, norm, 1.5, w, beta=0.25)
    expected = terms["MAE_all"] + 3.0 * terms["MAE_ext"] + 0.1 * terms["L_mass"] + 0.25 * terms["L_kl"]
    assert float(terms["total"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(terms["L_kl"]) == pytest.approx(0.5 * float((out["mu"] ** 2).sum(1).mean()), rel=1e-6)
