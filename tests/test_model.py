"""The cVAE network: shapes on awkward grids, no output clipping, priors, sampling, use of z, gradients, cost."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from precip_cvae.config import REFERENCE, ModelConfig
from precip_cvae.model import (
    CVAE,
    ConditionalPrior,
    Decoder,
    EncoderX,
    count_parameters,
    fit_latent_scales,
    flops_per_sample,
    n_scales,
)

# the reference design's network at a small size; tests of the newer options set them
SMALL = ModelConfig(**{**REFERENCE["model"], "d_z": 8, "base_filters": 4, "d_x": 16, "d_y": 16})
C, S = 3, 4


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_batch(lr_shape, hr_shape, batch=2, statics_batch=1):
    inputs = torch.randn(batch, C, *lr_shape)
    target = torch.randn(batch, 1, *hr_shape)
    statics = torch.rand(statics_batch, S, *hr_shape)
    return inputs, target, statics


def make_model(lr_shape, hr_shape, **changes) -> CVAE:
    return CVAE(C, S, lr_shape, hr_shape, dataclasses.replace(SMALL, **changes))


GRIDS = [((5, 7), (19, 29)), ((4, 3), (24, 20)), ((1, 1), (37, 23)), ((13, 11), (156, 132)), ((3, 2), (5, 4))]


@pytest.mark.parametrize(("lr_shape", "hr_shape"), GRIDS)
@pytest.mark.parametrize("decoder_statics", [False, True])
def test_shapes_forward_and_sample(lr_shape, hr_shape, decoder_statics):
    model = make_model(lr_shape, hr_shape, prior="conditional", decoder_statics=decoder_statics)
    inputs, target, statics = make_batch(lr_shape, hr_shape, batch=3, statics_batch=1)
    out = model(inputs, target, statics)
    assert out["recon"].shape == (3, 1, *hr_shape)
    for key in ("mu", "logvar", "prior_mu", "prior_logvar", "z"):
        assert out[key].shape == (3, SMALL.d_z), key
        assert torch.isfinite(out[key]).all(), key
    assert torch.isfinite(out["recon"]).all()
    with torch.no_grad():
        for mode in ("prior", "posterior"):
            samples = model.sample(inputs, statics, n_samples=4, mode=mode, target=target)
            assert samples.shape == (3, 4, 1, *hr_shape)
            assert torch.isfinite(samples).all()


def test_statics_with_batch_one_broadcast_like_full_batch():
    lr_shape, hr_shape = (4, 3), (24, 20)
    model = make_model(lr_shape, hr_shape, decoder_statics=True).eval()
    inputs, target, statics = make_batch(lr_shape, hr_shape, batch=3)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    with torch.no_grad():
        once = model(inputs, target, statics, generator=g1)
        full = model(inputs, target, statics.expand(3, -1, -1, -1).clone(), generator=g2)
    torch.testing.assert_close(once["recon"], full["recon"])
    with pytest.raises(ValueError, match="statics batch size"):
        model(inputs, target, torch.rand(2, S, *hr_shape))


def test_wrong_grid_is_a_clear_error():
    model = make_model((4, 3), (24, 20))
    inputs, target, statics = make_batch((4, 3), (24, 20))
    with pytest.raises(ValueError, match="target"):
        model(inputs, target[..., :-1], statics)
    with pytest.raises(ValueError, match="inputs"):
        model(inputs[:, :2], target, statics)


def test_seed_size_and_encoder_on_one_pixel():
    assert n_scales((156, 132)) == 4 and n_scales((96, 84)) == 3 and n_scales((24, 20)) == 1
    assert n_scales((5, 40)) == 0
    dec = Decoder(d_z=4, d_x=4, hr_shape=(156, 132), base_filters=2)
    assert dec.seed_shape == (10, 9)
    enc = EncoderX(in_channels=2, d_x=5, base_filters=4)
    a, b = enc(torch.randn(1, 2, 1, 1)), enc(torch.randn(1, 2, 1, 1))
    assert a.shape == (1, 5) and not torch.allclose(a, b)


def test_output_is_not_clipped():
    model = make_model((4, 3), (24, 20)).eval()
    with torch.no_grad():
        model.decoder.out_conv.bias.fill_(-5.0)
        inputs, target, statics = make_batch((4, 3), (24, 20))
        recon = model(inputs, target, statics)["recon"]
        samples = model.sample(inputs, statics, n_samples=2)
    assert (recon < 0).any() and (samples < 0).any()


def test_standard_prior_is_zero_and_conditional_prior_depends_on_inputs():
    lr_shape, hr_shape = (4, 3), (24, 20)
    standard = make_model(lr_shape, hr_shape, prior="standard")
    assert standard.prior_net is None
    assert not any(isinstance(m, ConditionalPrior) for m in standard.modules())
    inputs, target, statics = make_batch(lr_shape, hr_shape)
    out = standard(inputs, target, statics)
    assert torch.equal(out["prior_mu"], torch.zeros(2, SMALL.d_z))
    assert torch.equal(out["prior_logvar"], torch.zeros(2, SMALL.d_z))

    conditional = make_model(lr_shape, hr_shape, prior="conditional").eval()
    with torch.no_grad():
        mu_a, _ = conditional.prior(conditional.encode_x(inputs[:1]))
        mu_b, _ = conditional.prior(conditional.encode_x(inputs[:1] + 1.0))
    assert not torch.allclose(mu_a, mu_b)


@pytest.mark.parametrize("prior", ["standard", "conditional"])
def test_sampling_is_reproducible_and_temperature_zero_gives_the_mean(prior):
    lr_shape, hr_shape = (5, 7), (19, 29)
    model = make_model(lr_shape, hr_shape, prior=prior).eval()
    inputs, target, statics = make_batch(lr_shape, hr_shape)
    with torch.no_grad():
        kw = dict(n_samples=3, target=target)
        for mode in ("prior", "posterior"):
            a = model.sample(inputs, statics, mode=mode, generator=torch.Generator().manual_seed(7), **kw)
            b = model.sample(inputs, statics, mode=mode, generator=torch.Generator().manual_seed(7), **kw)
            c = model.sample(inputs, statics, mode=mode, generator=torch.Generator().manual_seed(8), **kw)
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            assert not torch.allclose(a, c)
            assert not torch.allclose(a[:, 0], a[:, 1])  # samples of one day differ

        cold = model.sample(inputs, statics, n_samples=3, temperature=0.0, mode="posterior", target=target)
        h_x = model.encode_x(inputs)
        mu, _ = model.posterior(target, statics, h_x)
        mean_decode = model.decode(mu, h_x, statics)
    for k in range(3):
        torch.testing.assert_close(cold[:, k], mean_decode)


def test_sample_argument_errors():
    model = make_model((4, 3), (24, 20))
    inputs, _, statics = make_batch((4, 3), (24, 20))
    with pytest.raises(ValueError, match="target"):
        model.sample(inputs, statics, mode="posterior")
    with pytest.raises(ValueError, match="mode"):
        model.sample(inputs, statics, mode="bogus")


def test_decoder_uses_z_at_initialization():
    lr_shape, hr_shape = (8, 7), (96, 84)
    model = make_model(lr_shape, hr_shape).eval()
    inputs, _, statics = make_batch(lr_shape, hr_shape)
    with torch.no_grad():
        h_x = model.encode_x(inputs)
        y1 = model.decode(torch.randn(2, SMALL.d_z), h_x, statics)
        y2 = model.decode(torch.randn(2, SMALL.d_z), h_x, statics)
    rel = (y1 - y2).abs().mean() / y1.abs().mean()
    assert rel > 1e-3


@pytest.mark.parametrize("prior", ["standard", "conditional"])
def test_gradients_reach_every_parameter(prior):
    lr_shape, hr_shape = (5, 7), (19, 29)
    counts = {}
    for decoder_statics in (False, True):
        model = make_model(lr_shape, hr_shape, prior=prior, decoder_statics=decoder_statics)
        counts[decoder_statics] = count_parameters(model)
        out = model(*make_batch(lr_shape, hr_shape))
        loss = out["recon"].abs().mean() + out["mu"].pow(2).mean()
        loss.backward()
        for name, param in model.named_parameters():
            if name.startswith("prior_net."):
                assert param.grad is None  # the loss above does not involve the prior
                continue
            assert param.grad is not None, name
            assert torch.isfinite(param.grad).all(), name
        assert any(name.startswith("prior_net.") for name, _ in model.named_parameters()) == (prior == "conditional")
        if prior == "conditional":
            model.zero_grad(set_to_none=True)
            out = model(*make_batch(lr_shape, hr_shape))
            (out["prior_mu"].pow(2).mean() + out["prior_logvar"].pow(2).mean()).backward()
            assert all(p.grad is not None for p in model.prior_net.parameters())
    assert counts[True] > counts[False]


def test_count_parameters_and_flops():
    lr_shape, hr_shape = (8, 7), (96, 84)
    flops = {}
    for base in (4, 8):
        model = make_model(lr_shape, hr_shape, base_filters=base)
        n = count_parameters(model)
        assert isinstance(n, int) and n == sum(p.numel() for p in model.parameters())
        flops[base] = flops_per_sample(model, C, S, lr_shape, hr_shape)
        assert isinstance(flops[base], int) and flops[base] > 0
        assert model.training  # the train/eval state is restored
    assert flops[8] > 2 * flops[4]


def test_the_block_width_cap_narrows_the_up_blocks_and_not_the_seed():
    base = 4
    # three scales: the seed at 1/8 is 2 x base wide under the cap of 2; the blocks double no more (1/4, 1/2, 1/1)
    wide = make_model((8, 7), (96, 84), decoder_width_cap=2)
    narrow = make_model((8, 7), (96, 84), decoder_width_cap=2, decoder_block_width_cap=1)
    for model, blocks in ((wide, [2 * base, 2 * base, base]), (narrow, [base, base, base])):
        assert model.decoder.seed_conv.out_channels == 2 * base
        assert [b.conv2.out_channels for b in model.decoder.blocks] == blocks
    assert flops_per_sample(narrow, C, S, (8, 7), (96, 84)) < flops_per_sample(wide, C, S, (8, 7), (96, 84))
    # one scale (a seed and one block of base_filters): the same network, weight for weight and output for output
    models = []
    for block_cap in (None, 1):
        torch.manual_seed(3)
        models.append(make_model((5, 7), (19, 29), decoder_width_cap=2, decoder_block_width_cap=block_cap))
    a, b = (m.state_dict() for m in models)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    inputs, target, statics = make_batch((5, 7), (19, 29))
    outs = [m(inputs, target, statics, generator=torch.Generator().manual_seed(1))["recon"] for m in models]
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize(("lr_shape", "hr_shape"), [((5, 7), (19, 29)), ((1, 1), (37, 23))])
def test_prior_draws_for_the_ensemble_term_carry_gradients_to_the_prior(lr_shape, hr_shape):
    model = make_model(lr_shape, hr_shape, prior="conditional", decoder_statics=True)
    inputs, target, statics = make_batch(lr_shape, hr_shape, batch=3)
    g = torch.Generator().manual_seed(2)
    out = model(inputs, target, statics, generator=g, n_prior=4)
    assert out["prior_samples"].shape == (3, 4, 1, *hr_shape) and torch.isfinite(out["prior_samples"]).all()
    out["prior_samples"].abs().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.prior_net.parameters())
    assert all(p.grad is None for p in model.encoder_y.parameters())  # the posterior plays no part in them
    # the draws are those `sample` makes from the prior with the same noise (after the posterior's draw)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    model.eval()
    with torch.no_grad():
        drawn = model(inputs, target, statics, generator=g1, n_prior=3)["prior_samples"]
        _ = torch.randn((3, SMALL.d_z), generator=g2)  # the posterior sample of forward
        sampled = model.sample(inputs, statics, n_samples=3, mode="prior", generator=g2)
    torch.testing.assert_close(drawn, sampled)
    assert "prior_samples" not in model(inputs, target, statics)


@pytest.mark.parametrize(("lr_shape", "hr_shape", "scales"), [((5, 7), (37, 29), (4, 2)), ((4, 3), (96, 84), (8,)),
                                                              ((3, 2), (24, 20), (2, 1))])  # fmt: skip
def test_spatial_latents_shapes_kl_and_sampling_on_odd_grids(lr_shape, hr_shape, scales):
    model = make_model(lr_shape, hr_shape, prior="conditional", latent_scales=scales, latent_channels=3)
    inputs, target, statics = make_batch(lr_shape, hr_shape, batch=2)
    out = model(inputs, target, statics, generator=torch.Generator().manual_seed(0), n_prior=2)
    assert out["recon"].shape == (2, 1, *hr_shape) and out["prior_samples"].shape == (2, 2, 1, *hr_shape)
    assert sorted(out["scale_kl"]) == sorted(scales)
    for factor, kl in out["scale_kl"].items():
        assert kl.shape == (2, 3) and (kl >= -1e-4).all()
        assert out["scale_pixels"][factor] >= (hr_shape[0] // factor) * (hr_shape[1] // factor)
    out["recon"].abs().mean().backward()
    for latent in model.decoder.latents.values():  # the posterior path trains every spatial latent's layers
        assert latent.posterior.weight.grad is not None and latent.inject.weight.grad is not None
    with torch.no_grad():
        for mode in ("prior", "posterior"):
            a = model.sample(inputs, statics, 3, mode=mode, target=target, generator=torch.Generator().manual_seed(4))
            b = model.sample(inputs, statics, 3, mode=mode, target=target, generator=torch.Generator().manual_seed(4))
            assert a.shape == (2, 3, 1, *hr_shape) and torch.equal(a, b)
            assert (a[:, 0] - a[:, 1]).abs().mean() > 0  # the latent maps make draws differ


def test_spatial_latent_kl_matches_the_gaussian_formula_in_float64():
    from precip_cvae.model import SpatialContext, SpatialLatent

    torch.manual_seed(1)
    layer = SpatialLatent(channels=6, encoder_channels=5, latent_channels=2, factor=4).double()
    x, enc = torch.randn(3, 6, 7, 9, dtype=torch.float64), torch.randn(3, 5, 6, 9, dtype=torch.float64)
    context = SpatialContext([enc], generator=torch.Generator().manual_seed(0))
    layer(x, 0, context)
    p_mu, p_logvar = layer.prior(x).chunk(2, dim=1)
    q_mu, q_logvar = layer.posterior(torch.cat([x, torch.nn.functional.pad(enc, (0, 0, 0, 1))], 1)).chunk(2, dim=1)
    q = torch.distributions.Normal(q_mu, (0.5 * q_logvar).exp())
    p = torch.distributions.Normal(p_mu, (0.5 * p_logvar).exp())
    expected = torch.distributions.kl_divergence(q, p).sum(dim=(2, 3))
    torch.testing.assert_close(context.kl[4], expected.float(), rtol=1e-5, atol=1e-5)
    assert context.pixels[4] == 7 * 9


@pytest.mark.parametrize(
    "scales, hr_shape, expected",
    [((8, 4), (96, 84), (8, 4)), ((8, 4), (156, 132), (8, 4)), ((8, 4), (19, 29), (2, 1)), ((16,), (24, 20), (2,)),
     ((8, 2), (24, 20), (2,)), ((4, 2), (48, 48), (4, 2)), ((), (19, 29), ())],
)  # fmt: skip
def test_latent_scales_too_coarse_for_the_grid_are_shifted_down_together(scales, hr_shape, expected):
    assert fit_latent_scales(scales, hr_shape) == expected
    model = make_model((4, 3), hr_shape, latent_scales=scales)
    assert tuple(sorted((m.factor for m in model.decoder.latents.values()), reverse=True)) == expected


def test_a_latent_scale_that_is_not_a_power_of_2_is_a_clear_error():
    with pytest.raises(ValueError, match="model.latent_scales: 3 is not a power of 2"):
        make_model((4, 3), (24, 20), latent_scales=(4, 3))


@pytest.mark.parametrize(("lr_shape", "hr_shape"), [((5, 7), (19, 29)), ((1, 1), (37, 23)), ((3, 2), (5, 4))])
def test_censored_output_is_exactly_dry_below_zero_mm_and_passes_gradients_through(lr_shape, hr_shape):
    dry = -torch.rand(*hr_shape) - 0.2  # a per-pixel normalized 0 mm/day, as Normalization.dry_z
    model = CVAE(C, S, lr_shape, hr_shape, dataclasses.replace(SMALL, output="censored", latent_scales=(2,)), dry)
    linear = CVAE(C, S, lr_shape, hr_shape, dataclasses.replace(SMALL, latent_scales=(2,)))
    linear.load_state_dict(model.state_dict(), strict=False)  # the same weights, without the head's buffer
    inputs, target, statics = make_batch(lr_shape, hr_shape, batch=3)
    out = model(inputs, target, statics, generator=torch.Generator().manual_seed(1), n_prior=2)
    raw = linear(inputs, target, statics, generator=torch.Generator().manual_seed(1), n_prior=2)
    for key in ("recon", "prior_samples"):
        assert out[key].shape == raw[key].shape
        torch.testing.assert_close(out[key], torch.maximum(raw[key], dry.expand_as(raw[key])))
    censored = (raw["recon"] < dry).sum()
    assert 0 < censored < raw["recon"].numel()  # both parts of the mixed output occur at initialization
    # straight through: a censored pixel's gradient is that of the uncensored value
    weight = torch.randn_like(out["recon"])
    (out["recon"] * weight).sum().backward()
    (raw["recon"] * weight).sum().backward()
    for (name, p), q in zip(model.named_parameters(), linear.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    with torch.no_grad():
        samples = model.eval().sample(inputs, statics, n_samples=4, generator=torch.Generator().manual_seed(3))
    assert samples.shape == (3, 4, 1, *hr_shape) and (samples >= dry).all() and (samples == dry).any()
    # the checkpoint carries the dry value: a model rebuilt without it and loaded equals the original
    rebuilt = CVAE(C, S, lr_shape, hr_shape, model.config)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.decoder.output.dry_z[0, 0], dry)


def test_output_head_errors():
    with pytest.raises(ValueError, match="model.output must be one of linear, censored"):
        make_model((4, 3), (24, 20), output="hurdle")
    with pytest.raises(ValueError, match=r"dry_z: expected shape \(24, 20\)"):
        CVAE(C, S, (4, 3), (24, 20), dataclasses.replace(SMALL, output="censored"), torch.zeros(20, 24))
    unset = make_model((4, 3), (24, 20), output="censored")  # no dry value, no checkpoint loaded
    with pytest.raises(ValueError, match="the censored output needs the normalized 0 mm/day"):
        unset(*make_batch((4, 3), (24, 20)))


@pytest.mark.parametrize("shape", [(2, 5, 3, 4, 7), (1, 8, 8, 5, 5), (3, 2, 4, 1, 1)])
def test_the_fused_upsample_conv_is_the_conv_of_the_upsampled_map(shape):
    # float64 reference: a 3x3 conv of the nearest x2 upsampled map, values and gradients
    from precip_cvae.model._layers import upsample_conv

    B, c_in, c_out, h, w = shape
    torch.manual_seed(sum(shape))
    conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1).double()
    x = torch.randn(B, c_in, h, w, dtype=torch.float64, requires_grad=True)
    reference = conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
    fused = upsample_conv(x, conv)
    assert fused.shape == (B, c_out, 2 * h, 2 * w)
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-12)
    weights = torch.randn_like(reference)
    expected = torch.autograd.grad((reference * weights).sum(), [x, conv.weight, conv.bias])
    got = torch.autograd.grad((fused * weights).sum(), [x, conv.weight, conv.bias])
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


@pytest.mark.parametrize("statics_batch", [1, 3])
def test_the_head_convolves_the_statics_as_part_of_the_concatenated_input(statics_batch):
    # float64 reference: the head's first convolution applied to [x; statics] concatenated along channels
    from precip_cvae.model.decoder import Decoder

    torch.manual_seed(statics_batch)
    decoder = Decoder(8, 16, (24, 20), 4, n_statics=S, use_statics=True).double()
    x = torch.randn(3, 4, 24, 20, dtype=torch.float64, requires_grad=True)
    statics = torch.rand(statics_batch, S, 24, 20, dtype=torch.float64)
    reference = decoder.head[0](torch.cat([x, statics.expand(3, -1, -1, -1)], dim=1))
    split = decoder._head_conv(x, statics)
    torch.testing.assert_close(split, reference, rtol=0, atol=1e-12)
    weights = torch.randn_like(reference)
    expected = torch.autograd.grad((reference * weights).sum(), [x, decoder.head[0].weight])
    got = torch.autograd.grad((split * weights).sum(), [x, decoder.head[0].weight])
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    with pytest.raises(ValueError, match="statics batch size 2"):
        decoder._head_conv(x, statics[:1].expand(2, -1, -1, -1))
    with pytest.raises(ValueError, match="needs the static maps"):
        decoder._head_conv(x, None)


@pytest.mark.parametrize("statics_batch", [1, 5])
@pytest.mark.parametrize("latent_scales", [(), (2,)])
def test_the_fine_tail_over_slices_of_the_batch_is_the_whole_batchs_forward_and_backward(
    monkeypatch, statics_batch, latent_scales
):
    # on a CPU the decoder runs its fine-scale tail over slices of the batch that fit CACHE_BYTES; float64 reference:
    # the same decoder, the same noise, the whole batch at once
    from precip_cvae import slices

    torch.manual_seed(3)
    # blocks to 16 x 12, 32 x 24 and 64 x 48
    decoder = Decoder(4, 6, (64, 48), 4, n_statics=S, use_statics=True, latent_scales=latent_scales,
                      encoder_channels=(4, 8, 8, 8)).double()  # fmt: skip
    z, h_x = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    statics = torch.rand(statics_batch, S, 64, 48, dtype=torch.float64)
    seed = decoder.seed(torch.cat([z, h_x], 1)).view(-1, decoder.seed_channels, *decoder.seed_shape)
    per_field = 4 * 8 * 64 * 48  # the largest tail map of one field: 4 channels of 64 x 48 (8 of 32 x 24 are half)

    def run(budget):
        monkeypatch.setattr(slices, "CACHE_BYTES", budget)
        torch.manual_seed(7)  # the spatial latent's prior draw
        out = decoder(z, h_x, statics)
        return out, torch.autograd.grad(out.pow(2).sum(), [h_x, *decoder.parameters()], allow_unused=True)

    whole, whole_grads = run(2**40)
    monkeypatch.setattr(slices, "CACHE_BYTES", 2 * per_field)
    start = decoder._tail_start(seed)
    # the last two blocks' outputs of the 5 fields (8 x 32 x 24 and 4 x 64 x 48) outgrow 2 fields' worth, the first's
    # (8 x 16 x 12) does not; a latent at factor 2 keeps the block it follows (32 x 24) out of the tail
    assert start == (1 if not latent_scales else 2)
    tail_input = torch.zeros(5, 8, 8 * 2**start, 6 * 2**start, dtype=torch.float64)  # the map the tail starts from
    assert decoder._tail_bytes(tail_input, start) == per_field
    assert slices.rows(tail_input, per_field) == 2  # slices of 2, 2 and 1 fields
    sliced, sliced_grads = run(2 * per_field)
    torch.testing.assert_close(sliced, whole, rtol=0, atol=1e-12)
    for a, b in zip(sliced_grads, whole_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    calls = []
    monkeypatch.setattr(decoder, "_fine", lambda x, *a: calls.append(x.shape[0]) or Decoder._fine(decoder, x, *a))
    tiny, _ = run(1)  # a budget below one field: one field at a time
    torch.testing.assert_close(tiny, whole, rtol=0, atol=1e-12)
    assert calls == [1] * 5


def test_group_norm_keeps_bf16_under_autocast_where_autocast_would_upcast_it(monkeypatch):
    # On CUDA, autocast runs group_norm in float32 (tests/test_cuda.py checks that premise); the model's GroupNorm then
    # normalizes bf16 maps in bf16. A CPU's autocast keeps the type, so the path is exercised here by declaring the CPU
    # an upcasting device; float32 reference: the plain layer on the same (bf16-rounded) input.
    from precip_cvae.model import _layers
    from precip_cvae.model.decoder import UpBlock

    torch.manual_seed(0)
    norm = _layers.GroupNorm(4, 16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    plain = torch.nn.GroupNorm(4, 16)
    plain.load_state_dict(norm.state_dict())
    x = (torch.randn(3, 16, 12, 10) * 3 + 1).to(torch.bfloat16)
    torch.testing.assert_close(norm(x.float()), plain(x.float()), rtol=0, atol=0)  # no autocast: the plain layer
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(norm(x), plain(x))  # the CPU is not an upcasting device: the plain layer
    monkeypatch.setattr(_layers, "GROUP_NORM_UPCAST", {"cuda", "cpu"})
    weights = torch.randn(3, 16, 12, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    assert out.dtype == torch.bfloat16
    reference = plain(x.float())
    torch.testing.assert_close(out.float(), reference, rtol=0, atol=0.05)  # bf16 keeps 8 bits: 1/128 of ~3
    assert (out.float() - reference).abs().max() > 0  # it did run in bf16
    got = torch.autograd.grad((out.float() * weights).sum(), [norm.weight, norm.bias])
    expected = torch.autograd.grad((reference * weights).sum(), [plain.weight, plain.bias])
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.02, atol=0.5)
    block = UpBlock(8, 16, 4)
    assert isinstance(block.norm1, _layers.GroupNorm) and isinstance(block.norm2, _layers.GroupNorm)
