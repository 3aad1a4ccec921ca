"""Convolutions computed another way (precip_cvae.convs) against the plain layer, in float64, and SRDRN's fine end
against the layers applied as its layout reads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from precip_cvae import convs
from precip_cvae.convs import conv_with_statics, single_output_conv
from precip_cvae.downstream.srdrn import SRDRN, center_crop


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad((out * weights).sum(), inputs)


@pytest.mark.parametrize("statics_batch", [1, 3])
@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_with_statics_is_the_convolution_of_the_concatenation(statics_batch, kernel):
    torch.manual_seed(kernel)
    conv = nn.Conv2d(5 + 2, 4, kernel, padding=kernel // 2).double()
    x = torch.randn(3, 5, 9, 7, dtype=torch.float64, requires_grad=True)
    statics = torch.randn(statics_batch, 2, 9, 7, dtype=torch.float64)
    reference = conv(torch.cat([x, statics.expand(3, -1, -1, -1)], dim=1))
    split = conv_with_statics(conv, x, statics)
    torch.testing.assert_close(split, reference, rtol=0, atol=1e-12)
    weights = torch.randn_like(reference)
    parts = [x, conv.weight, conv.bias]
    for a, b in zip(_grads(split, parts, weights), _grads(reference, parts, weights), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    with pytest.raises(ValueError, match="do not make the 7 input channels"):
        conv_with_statics(conv, x, torch.randn(1, 3, 9, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="a batch of 3"):
        conv_with_statics(conv, x, torch.randn(2, 2, 9, 7, dtype=torch.float64))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_single_output_conv_is_the_layer(channels_last, bias):
    torch.manual_seed(int(bias))
    conv = nn.Conv2d(6, 1, 9, padding=4, bias=bias).double()
    x = torch.randn(4, 6, 14, 31, dtype=torch.float64)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    reference = F.conv2d(x, conv.weight, conv.bias, padding=4)
    got = single_output_conv(conv, x)
    assert got.shape == (4, 1, 14, 31)
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-12)
    weights = torch.randn_like(reference)
    parts = [x, *conv.parameters()]
    for a, b in zip(_grads(got, parts, weights), _grads(reference, parts, weights), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_single_output_conv_leaves_other_layers_as_they_are(monkeypatch):
    x = torch.randn(2, 4, 8, 8)
    calls = []
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: calls.append(k.get("groups", 1)) or torch.zeros(2, 4, 8, 8))
    others = (nn.Conv2d(4, 2, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1, stride=2),
              nn.Conv2d(4, 1, 3, padding="same"), nn.Conv2d(4, 1, 3, padding=1, padding_mode="reflect"))  # fmt: skip
    for layer in others:
        monkeypatch.setattr(layer, "forward", lambda x, layer=layer: calls.append("layer") or x)
        single_output_conv(layer, x)
    assert calls == ["layer"] * 4  # never the per-channel form
    single_output_conv(nn.Conv2d(4, 1, 3, padding=1), x)
    assert calls[-1] == 4  # per-channel: groups = the input channels
    monkeypatch.setattr(convs, "PER_CHANNEL_ON_CPU", False)  # the benchmark's reference: the layer as it is
    layer = nn.Conv2d(4, 1, 3, padding=1)
    monkeypatch.setattr(layer, "forward", lambda x: calls.append("layer") or x)
    single_output_conv(layer, x)
    assert calls[-1] == "layer"


def _fine_as_laid_out(model: SRDRN, x: torch.Tensor, statics: torch.Tensor | None) -> torch.Tensor:
    """SRDRN's fine end as its layout reads: each stage's PReLU on the whole upsampled map, the crop, the static
    maps concatenated, the fusion and the last convolution as plain layers."""
    x = center_crop(model.upsample(x), model.hr_shape)
    if statics is not None:
        x = torch.cat([x, statics.expand(x.shape[0], -1, -1, -1)], dim=1)
    return model.final(model.fuse(x))


CASES = [((3, 7), (14, 31), 1, 1, 1), ((5, 7), (19, 29), 2, 4, 3), ((4, 4), (3, 4), 0, 0, 1)]


@pytest.mark.parametrize(("lr", "hr", "n_statics", "statics_batch", "n_outputs"), CASES)
def test_srdrn_fine_end_is_its_layout(lr, hr, n_statics, statics_batch, n_outputs):
    # Fraser's grid (a crop after the x6 stages), an odd grid with per-day statics and quantiles, and a crop alone
    torch.manual_seed(n_statics)
    model = SRDRN(3, lr, hr, n_statics=n_statics, filters=8, n_blocks=1, n_outputs=n_outputs).double()
    features = torch.randn(4, 8, *lr, dtype=torch.float64, requires_grad=True)
    statics = torch.randn(statics_batch, n_statics, *hr, dtype=torch.float64) if n_statics else None
    got = model._fine(features, statics)
    reference = _fine_as_laid_out(model, features, statics)
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-12)
    weights = torch.randn_like(reference)
    parts = [features, *model.upsample.parameters(), *model.fuse.parameters(), *model.final.parameters()]
    for a, b in zip(_grads(got, parts, weights), _grads(reference, parts, weights), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
