"""Loss terms by hand, against a float64 reference and against a Monte-Carlo estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from precip_cvae.data.normalize import Normalization, target_to_normalized, threshold_to_normalized
from precip_cvae.losses import (
    LossWeights,
    almost_fair_crps,
    cvae_loss,
    ensemble_crps,
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


def _afcrps_float64(members: np.ndarray, target: np.ndarray, alpha: float) -> np.ndarray:
    """Reference: alpha * fair CRPS + (1 - alpha) * CRPS of the empirical distribution, pointwise, float64."""
    M = members.shape[0]
    skill = np.abs(members - target).mean(axis=0)
    pairs = np.abs(members[:, None] - members[None]).sum(axis=(0, 1))
    return alpha * (skill - pairs / (2 * M * (M - 1))) + (1 - alpha) * (skill - pairs / (2 * M * M))


@pytest.mark.parametrize("alpha", [0.0, 0.95, 1.0])
def test_almost_fair_crps_against_a_float64_reference_and_scoringrules(alpha):
    rng = np.random.default_rng(4)
    members = rng.gamma(0.8, 3.0, (3, 5, 6, 7))  # (B, M, H, W)
    target = rng.gamma(0.8, 3.0, (3, 6, 7))
    mask = rng.random((3, 6, 7)) < 0.8
    got = almost_fair_crps(torch.from_numpy(members), torch.from_numpy(target), torch.from_numpy(mask), alpha)
    ref = _afcrps_float64(np.moveaxis(members, 1, 0), target, alpha)[mask].mean()
    assert float(got) == pytest.approx(ref, rel=1e-12)
    sr = pytest.importorskip("scoringrules")
    if alpha in (0.0, 1.0):  # the two ends are scoringrules' estimators
        estimator = "fair" if alpha == 1.0 else "nrg"
        lib = sr.crps_ensemble(target, np.moveaxis(members, 1, -1), estimator=estimator)[mask].mean()
        assert float(got) == pytest.approx(lib, rel=1e-10)


def test_almost_fair_crps_keeps_two_members_from_drifting_apart():
    # With M = 2 the fair CRPS of members at y - d and y + d is the same for every d <= |y - x| spread: no penalty
    # for drifting apart. The almost-fair one (alpha < 1) is lowest when the members sit on the observation.
    y = torch.zeros(1, 1)
    mask = torch.ones(1, 1, dtype=torch.bool)

    def score(d, alpha):
        return float(almost_fair_crps(torch.tensor([[[-d], [d]]]), y, mask, alpha))

    assert score(0.0, 1.0) == pytest.approx(score(1.0, 1.0)) == pytest.approx(0.0)
    assert score(0.0, 0.95) < score(0.5, 0.95) < score(1.0, 0.95)


def test_pooled_crps_term_by_hand():
    # One day, 2 members, a 2 x 4 grid in 2 x 2 blocks: block means (0, 2) and (2, 0) vs observed (1, 1). With
    # alpha = 0 (the empirical CRPS) each block scores mean |x - y| - sum |x_j - x_k| / (2 M^2) = 1 - 4 / 8.
    members = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    members = torch.stack([members, members.flip(-1)])[None, :, None]  # (1, 2, 1, 2, 4)
    target = torch.ones(1, 1, 2, 4)
    mask = torch.ones(1, 1, 2, 4, dtype=torch.bool)
    pooled = ensemble_crps(members, target, mask, alpha=0.0, pools=(2,))
    assert float(pooled) == pytest.approx(0.5)
    both = ensemble_crps(members, target, mask, alpha=0.0, pools=(1, 2))
    assert float(both) == pytest.approx(float(pooled) + float(almost_fair_crps(members, target, mask, 0.0)))
    # a block with fewer than half of its pixels valid does not count; one with 3 of 4 does, over those 3
    mask[..., :, :2] = False
    mask[..., 0, 2] = False
    assert float(ensemble_crps(members, target, mask, 0.0, (2,))) == pytest.approx(0.5)
    members[0, 0, 0, 1, 2] = 5.0  # a valid pixel of the counted block: its mean moves to (5 + 2 + 2) / 3 = 3
    assert float(ensemble_crps(members, target, mask, 0.0, (2,))) == pytest.approx((2 + 1) / 2 - 3 / 4)
