"""The SRDRN port: any grid, non-crossing quantiles, gradients, statics, overfit one batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from precip_cvae.data.normalize import Normalization
from precip_cvae.downstream.losses import (
    weighted_mae,
)
from precip_cvae.downstream.srdrn import (
    SRDRN,
    count_parameters,
    recalibrate_batchnorm,
    set_bn_momentum,
    upsampling_factors,
)

GRIDS = [((5, 7), (19, 29)), ((13, 11), (156, 132)), ((8, 7), (96, 84)), ((3, 2), (24, 20)), ((1, 1), (9, 7))]


def tiny(lr, hr, **kwargs) -> SRDRN:
    return SRDRN(3, lr, hr, filters=8, n_blocks=2, **kwargs)


@pytest.mark.parametrize(("lr", "hr"), GRIDS)
@pytest.mark.parametrize("n_statics", [0, 2])
def test_srdrn_shapes_on_odd_grids(lr, hr, n_statics):
    torch.manual_seed(0)
    model = tiny(lr, hr, n_statics=n_statics)
    statics = torch.randn(1, n_statics, *hr) if n_statics else None  # batch 1, broadcast to the batch
    out = model(torch.randn(2, 3, *lr), statics)
    assert out.shape == (2, 1, *hr)
    assert math.prod(model.factors) >= max(math.ceil(hr[0] / lr[0]), math.ceil(hr[1] / lr[1]))


def test_upsampling_factors_are_the_smallest_product_of_twos_and_threes():
    assert upsampling_factors((13, 11), (156, 132)) == (2, 2, 3)
    assert upsampling_factors((5, 7), (19, 29)) == (2, 3)  # ratio 5 -> 6
    assert upsampling_factors((1, 1), (9, 7)) == (3, 3)
    assert upsampling_factors((2, 2), (14, 14)) == (2, 2, 2)  # ratio 7 -> 8
    assert upsampling_factors((4, 4), (3, 4)) == ()  # only a crop


def test_srdrn_gradients_reach_all_parameters():
    torch.manual_seed(0)
    model = tiny((5, 7), (19, 29), n_statics=2, n_outputs=3)
    statics = torch.randn(1, 2, 19, 29)
    out = model(torch.randn(4, 3, 5, 7), statics)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_srdrn_statics_batch_matches_and_errors():
    torch.manual_seed(0)
    model = tiny((3, 2), (24, 20), n_statics=1).eval()
    x = torch.randn(3, 3, 3, 2)
    statics = torch.randn(1, 1, 24, 20)
    assert torch.allclose(model(x, statics), model(x, statics.expand(3, -1, -1, -1)))
    with pytest.raises(ValueError):
        model(x)  # statics missing
    with pytest.raises(ValueError):
        model(x, torch.randn(2, 1, 24, 20))  # batch neither 1 nor B
    with pytest.raises(ValueError):
        tiny((3, 2), (24, 20))(x, statics)  # statics given to a model without
    assert tiny((3, 2), (24, 20))(x, torch.zeros(1, 0, 24, 20)).shape == (3, 1, 24, 20)  # an empty stack is fine
    with pytest.raises(ValueError):
        model(torch.randn(3, 3, 4, 2), statics)  # wrong coarse grid


@pytest.mark.parametrize("statics_batch", [0, 1, 5])
def test_the_fine_grid_over_slices_of_the_batch_is_the_whole_batchs_forward_and_backward(monkeypatch, statics_batch):
    # on a CPU SRDRN runs its fine-grid layers over slices of the batch that fit CACHE_BYTES; float64 reference: the
    # whole batch at once, in training mode (the BatchNorm before the slices sees the whole batch either way)
    from precip_cvae import slices

    torch.manual_seed(2)
    n_statics = min(statics_batch, 2)
    model = tiny((5, 7), (19, 29), n_statics=n_statics, n_outputs=3).double().train()
    x = torch.randn(5, 3, 5, 7, dtype=torch.float64)
    statics = torch.randn(statics_batch, n_statics, 19, 29, dtype=torch.float64) if n_statics else None
    per_field = (8 + n_statics) * 30 * 42 * 8  # fuse's input: 8 filters and the statics on the 6 x upsampled grid

    def run(budget):
        monkeypatch.setattr(slices, "CACHE_BYTES", budget)
        out = model(x, statics)
        return out, torch.autograd.grad((out * torch.arange(out.numel()).reshape(out.shape).sin()).sum(),
                                        list(model.parameters()))  # fmt: skip

    whole, whole_grads = run(2**40)
    assert slices.rows(x, per_field) == 5
    monkeypatch.setattr(slices, "CACHE_BYTES", 2 * per_field)
    assert slices.rows(x, per_field) == 2  # slices of 2, 2 and 1 fields
    sliced, sliced_grads = run(2 * per_field)
    torch.testing.assert_close(sliced, whole, rtol=0, atol=1e-12)
    for a, b in zip(sliced_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    calls = []
    monkeypatch.setattr(model, "_fine", lambda *a: calls.append(a[0].shape[0]) or SRDRN._fine(model, *a))
    run(2 * per_field)
    assert calls == [2, 2, 1]


def test_quantile_outputs_do_not_cross():
    torch.manual_seed(0)
    model = tiny((3, 2), (24, 20), n_outputs=4)
    with torch.no_grad():
        model.final.bias.copy_(torch.tensor([0.0, -30.0, 5.0, -5.0]))  # some increments softplus-tiny
        out = model(3 * torch.randn(8, 3, 3, 2))
    assert out.shape == (8, 4, 24, 20)
    assert (out[:, 1:] >= out[:, :-1]).all()


def test_single_output_has_no_activation():
    model = tiny((3, 2), (24, 20))
    with torch.no_grad():
        model.final.weight.zero_()
        model.final.bias.fill_(-5.0)
        out = model(torch.randn(2, 3, 3, 2))
    assert torch.allclose(out, torch.full_like(out, -5.0))


def test_count_parameters():
    model = tiny((3, 2), (24, 20))
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    model.final.requires_grad_(False)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) - 8 * 81 - 1
    assert count_parameters(model, trainable_only=False) == sum(p.numel() for p in model.parameters())


def test_tiny_srdrn_overfits_one_batch():
    torch.manual_seed(0)
    model = SRDRN(2, (3, 3), (12, 12), filters=8, n_blocks=2)
    x = torch.randn(4, 2, 3, 3)
    mm = torch.distributions.Gamma(0.7, 0.1).sample((4, 1, 12, 12))  # mm/day, some above 10
    norm = Normalization(np.full((12, 12), 1.0), np.full((12, 12), 1.2))
    y = norm.to_z(mm)
    mask = torch.ones(4, 1, 12, 12, dtype=torch.bool)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = weighted_mae(model(x), y, mask, norm)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-10:]) * 5 <= losses[0], (losses[0], losses[-10:])


def test_batchnorm_recalibration_is_the_plain_average_of_batch_statistics():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2, momentum=0.5))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 2, 5, 3, generator=g) * (k + 1) + k for k in range(3)]
    weights = [p.detach().clone() for p in model.parameters()]
    model.eval()
    n = recalibrate_batchnorm(model, batches, lambda m, b: m(b))
    bn = model[1]
    with torch.no_grad():
        acts = [model[0](b) for b in batches]
    means = torch.stack([a.mean(dim=(0, 2, 3)) for a in acts])
    variances = torch.stack([a.var(dim=(0, 2, 3), unbiased=True) for a in acts])
    assert n == 3 and not model.training and bn.momentum == 0.5
    torch.testing.assert_close(bn.running_mean, means.mean(0))
    torch.testing.assert_close(bn.running_var, variances.mean(0))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), weights, strict=True))
    srdrn = tiny((3, 2), (24, 20))
    set_bn_momentum(srdrn, 0.01)
    moms = [m.momentum for m in srdrn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert moms and all(m == 0.01 for m in moms)
