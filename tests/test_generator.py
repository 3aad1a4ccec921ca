"""The generator: a checkpoint is loaded only for the dataset it was made for; draws are reproducible, in mm/day."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precip_cvae.checkpoint import load_checkpoint, model_shapes, save_checkpoint
from precip_cvae.data.dataset import PreparedData
from precip_cvae.errors import InputError
from precip_cvae.generator import BEST_CHECKPOINT, CHECKPOINT_DIR, Generator, select_device


def _best(config):
    from pathlib import Path

    return Path(config.data.outputs_root) / CHECKPOINT_DIR / BEST_CHECKPOINT


def test_draws_are_reproducible_and_in_mm_per_day(trained):
    data = PreparedData(trained.data.data_root)
    gen = Generator.from_outputs(data, trained.data.outputs_root, None, torch.device("cpu"))
    days = data.ids("test")[:3]
    inputs, z, mm = gen.draw(days, 4, "prior", 1.0, gen.rng(5))
    again = gen.draw(days, 4, "prior", 1.0, gen.rng(5))[2]
    assert inputs.shape == (3, data.n_channels, *data.lr_shape) and z.shape == mm.shape == (3, 4, *data.hr_shape)
    np.testing.assert_array_equal(mm, again)
    np.testing.assert_allclose(mm[:, :, data.valid_mask], data.normalization.to_mm(z)[:, :, data.valid_mask])
    assert np.isnan(mm[:, :, ~data.valid_mask]).all() and (mm[:, :, data.valid_mask] >= 0).all()
    assert gen.epoch == int(load_checkpoint(_best(trained))["epoch"]) + 1


def test_how_the_days_are_decoded_does_not_change_the_draw(trained):
    # On a CPU the generator decodes day by day with channels-last weights; at temperature 0 (every latent at its
    # prior mean) the draw is deterministic, so it must equal one (B K)-row pass of a plain model.
    data = PreparedData(trained.data.data_root)
    gen = Generator.from_outputs(data, trained.data.outputs_root, None, torch.device("cpu"))
    assert gen.days_per_pass == 1 and gen.model.decoder.head[0].weight.is_contiguous(memory_format=torch.channels_last)
    days = data.ids("test")[:3]
    per_day = gen.draw(days, 2, "prior", 0.0, gen.rng(0))[2]
    gen.days_per_pass = None
    gen.model.to(memory_format=torch.contiguous_format)
    one_pass = gen.draw(days, 2, "prior", 0.0, gen.rng(0))[2]
    assert np.isfinite(per_day[:, :, data.valid_mask]).all() and per_day[:, :, data.valid_mask].max() > 0
    np.testing.assert_allclose(per_day, one_pass, rtol=1e-5, atol=1e-5)


def test_a_checkpoint_of_another_dataset_is_refused(trained, tmp_path):
    data = PreparedData(trained.data.data_root)
    state = load_checkpoint(_best(trained))
    other = dict(state, normalization={**state["normalization"]})
    other["normalization"]["target_log1p_std"] = state["normalization"]["target_log1p_std"] * 1.5
    save_checkpoint(tmp_path / "other_norm.pt", other)
    with pytest.raises(InputError, match=r"other_norm.pt: trained with another normalization .*std"):
        Generator(data, tmp_path / "other_norm.pt", torch.device("cpu"))
    shapes = dict(model_shapes(data), hr_shape=[9, 9])
    save_checkpoint(tmp_path / "other_grid.pt", dict(state, shapes=shapes))
    with pytest.raises(InputError, match=r"other_grid.pt: trained for .*\[9, 9\]"):
        Generator(data, tmp_path / "other_grid.pt", torch.device("cpu"))
    with pytest.raises(InputError, match="checkpoint not found"):
        Generator(data, tmp_path / "missing.pt", torch.device("cpu"))


def test_device_names():
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="train.device"):
        select_device("not-a-device")
