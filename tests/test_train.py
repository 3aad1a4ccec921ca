"""Training: the pure step, overfitting one batch, checkpoints, resume equality, alarms, the CLI."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from precip_cvae import loop
from precip_cvae.checkpoint import load_checkpoint
from precip_cvae.config import load_config
from precip_cvae.errors import InputError
from precip_cvae.generator import build_model_from_checkpoint
from precip_cvae.train import Trainer, collapse_alarms, fit, train_step
from tests.cases import TINY_MODEL

TINY = TINY_MODEL


def _config(data: Path, out: Path, *extra: str, base: str | None = None):
    """The default generator at a tiny size (``base="reference"``: the reference design's)."""
    return load_config(base, [f"data.data_root={data}", f"data.outputs_root={out}", *TINY, *extra])


SPATIAL_CRPS = ["model.latent_scales=[2,1]", "loss.crps_weight=1.0", "loss.crps_members=2"]


@pytest.mark.parametrize(
    "base, variant",
    [pytest.param("reference", [], id="reference"),
     pytest.param("reference", ["model.output=censored"], id="reference+censored"),
     pytest.param("reference", SPATIAL_CRPS, id="reference+spatial+crps", marks=pytest.mark.slow),
     pytest.param(None, ["loss.crps_members=2"], id="default", marks=pytest.mark.slow)],
)  # fmt: skip
def test_overfit_one_batch(prepared, tmp_path, base, variant):
    config = _config(prepared, tmp_path, "model.base_filters=8", "model.d_z=8", *variant, base=base)
    trainer = Trainer(config, progress=False)
    batch = trainer.to_device(next(iter(trainer.train_loader(0))))
    opt = torch.optim.Adam(trainer.model.parameters(), lr=3e-3)
    first = loop.train_step(trainer.model, batch, opt, trainer.loss_fn(0.0), forward=trainer.forward)["total"]
    for _ in range(250):
        last = loop.train_step(trainer.model, batch, opt, trainer.loss_fn(0.0), forward=trainer.forward)["total"]
    assert last < first / 5, (first, last)


def test_non_finite_loss_skips_the_step(prepared, tmp_path):
    trainer = Trainer(_config(prepared, tmp_path), progress=False)
    batch = trainer.to_device(next(iter(trainer.train_loader(0))))
    before = [p.detach().clone() for p in trainer.model.parameters()]

    def nan_loss(out, b):
        terms = trainer.loss_fn(0.0)(out, b)
        terms["total"] = terms["total"] * float("nan")
        return terms

    assert train_step(trainer.model, batch, trainer.optimizer, nan_loss) is None
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_fit_writes_checkpoints_and_log_and_they_round_trip(prepared, tmp_path):
    config = _config(prepared, tmp_path / "run", "train.epochs=2", "train.save_every=1")
    result = fit(config, progress=False)
    ckpts = tmp_path / "run" / "checkpoints"
    for name in ("cvae_last.pt", "cvae_best.pt", "cvae_epoch_001.pt", "cvae_epoch_002.pt"):
        state = torch.load(ckpts / name, weights_only=True)
        assert {"model_state_dict", "optimizer_state_dict", "epoch", "config", "normalization", "versions"} <= set(
            state
        )
    state = load_checkpoint(ckpts / "cvae_last.pt")
    model = build_model_from_checkpoint(state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model_state_dict"][key])
    rows = list(csv.DictReader(open(tmp_path / "run" / "logs" / "train_log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for column in ("train_loss", "val_loss", "val_L_rec", "val_L_mass", "val_L_kl", "val_MAE_all", "val_MAE_tail",
                   "val_RMSE_all", "val_mass_bias", "beta", "lr", "seconds", "val_active_units",
                   "val_sample_spread_mm", "val_wet_fraction_samples", "val_wet_fraction_obs"):  # fmt: skip
        assert column in rows[0] and rows[-1][column] != ""
    # val_MAE_all is the MAE of the samples' pixelwise median, as in metrics.json: with 2 samples the median is their
    # mean, so by the triangle inequality it is at most the mean MAE of one sample (val_MAE_member)
    for row in rows:
        assert float(row["val_MAE_all"]) <= float(row["val_MAE_member"]) + 1e-6
    assert float(rows[0]["beta"]) < float(rows[1]["beta"]) == pytest.approx(config.loss.beta_kl)  # warm-up: 1 epoch
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert result["last_row"]["epoch"] == 2
    with pytest.raises(InputError, match="--resume"):
        fit(config, progress=False)


def test_resume_equals_uninterrupted(prepared, tmp_path):
    full = fit(_config(prepared, tmp_path / "a", "train.epochs=3"), progress=False)
    fit(_config(prepared, tmp_path / "b", "train.epochs=1"), progress=False)
    fit(_config(prepared, tmp_path / "b", "train.epochs=3"), resume=True, progress=False)
    a = torch.load(tmp_path / "a" / "checkpoints" / "cvae_last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "cvae_last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model_state_dict"].items():
        assert torch.equal(value, b["model_state_dict"][key]), key
    rows_b = list(csv.DictReader(open(tmp_path / "b" / "logs" / "train_log.csv")))
    assert [r["epoch"] for r in rows_b] == ["1", "2", "3"]
    assert float(rows_b[-1]["val_loss"]) == pytest.approx(full["last_row"]["val_loss"], rel=1e-6)


def test_bad_select_metric_names_the_key(prepared, tmp_path):
    with pytest.raises(InputError, match="train.select_metric"):
        fit(_config(prepared, tmp_path, "train.epochs=1", "train.select_metric=val_nope"), progress=False,
)  # fmt: skip


def test_missing_data_root_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="no prepared dataset"):
        fit(_config(tmp_path / "nowhere", tmp_path / "o"), progress=False)


def test_collapse_alarms_by_hand():
    healthy = {"val_active_units": 5, "val_sample_spread_mm": 1.0, "val_wet_fraction_samples": 0.5,
               "val_wet_fraction_obs": 0.45, "val_spatial_std_ratio": 0.9}  # fmt: skip
    assert collapse_alarms(healthy, 2.0, 16) == []
    sick = {"val_active_units": 0, "val_sample_spread_mm": 0.001, "val_wet_fraction_samples": 0.99,
            "val_wet_fraction_obs": 0.5, "val_spatial_std_ratio": 0.1}  # fmt: skip
    text = " ".join(collapse_alarms(sick, 2.0, 16))
    for word in ("posterior collapse", "copies", "drizzle", "mean collapse"):
        assert word in text


def test_train_cli_one_epoch_in_a_subprocess(prepared, tmp_path):
    argv = [sys.executable, "-m", "precip_cvae", "train", f"data.data_root={prepared}",
            f"data.outputs_root={tmp_path / 'cli'}", *TINY, "train.epochs=1"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cli" / "checkpoints" / "cvae_best.pt").is_file()
    assert "epoch   1" in result.stdout


def test_stratified_batches_reach_the_heavy_share(prepared, tmp_path):
    trainer = Trainer(_config(prepared, tmp_path, "train.heavy_share=0.5"), progress=False)
    flags = trainer.train_set.heavy_flags()
    assert 0 < flags.mean() < 0.2  # heavy days are rare in the data...
    drawn = []
    for epoch in range(20):
        drawn.extend(b for batch in trainer.train_loader(epoch) for b in batch["heavy"].tolist())
    assert np.mean(drawn) == pytest.approx(0.5, abs=0.08)  # ...and half of the draws


def test_overwrite_leaves_nothing_of_the_previous_run(prepared, tmp_path):
    fit(_config(prepared, tmp_path, "train.epochs=2", "train.save_every=1", base="reference"), progress=False)
    fit(_config(prepared, tmp_path, "train.epochs=1", base="reference"), overwrite=True, progress=False)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert names == ["cvae_best.pt", "cvae_epoch_001.pt", "cvae_last.pt"]
    assert [r["epoch"] for r in csv.DictReader(open(tmp_path / "logs" / "train_log.csv"))] == ["1"]


def test_the_ensemble_crps_term_trains_and_is_logged(prepared, tmp_path):
    config = _config(prepared, tmp_path, "train.epochs=2", "loss.crps_weight=1.0", "loss.crps_members=3",
                     "loss.crps_pools=[1,2]")  # fmt: skip
    result = fit(config, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "logs" / "train_log.csv")))
    assert all(float(r["train_L_crps"]) > 0 and float(r["val_L_crps"]) > 0 for r in rows)
    assert result["last_row"]["train_L_crps"] > 0
    trainer = Trainer(config, progress=False)
    batch = trainer.to_device(next(iter(trainer.train_loader(0))))
    with torch.no_grad():
        terms = trainer.loss_fn(0.0)(trainer.forward(trainer.model, batch, None), batch)
    expected = terms["L_rec"] + 0.1 * terms["L_mass"] + 1.0 * terms["L_crps"]
    assert float(terms["total"]) == pytest.approx(float(expected), rel=1e-6)
    # off in the reference design: its loss, no prior draws
    plain = Trainer(_config(prepared, tmp_path / "plain", base="reference"), progress=False)
    assert plain.n_prior == 0 and "prior_samples" not in plain.forward(plain.model, batch, None)


def test_spatial_latents_train_and_log_per_scale(prepared, tmp_path):
    config = _config(prepared, tmp_path, "train.epochs=2", "model.latent_scales=[2]", "model.latent_channels=3",
                     "loss.beta_kl=0.0005")  # fmt: skip
    fit(config, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "logs" / "train_log.csv")))
    for row in rows:
        assert row["train_L_kl_scales"].startswith("x2:") and row["val_L_kl_scales"].startswith("x2:")
        active = row["val_active_scales"]
        assert active.startswith("x2:") and active.endswith("/3")
        assert float(row["val_L_kl"]) >= float(row["val_L_kl_scales"][3:]) - 1e-3  # the scale's KL is part of it
    state = torch.load(tmp_path / "checkpoints" / "cvae_best.pt", weights_only=True)
    assert any(k.startswith("decoder.latents.") for k in state["model_state_dict"])


def test_a_collapsed_latent_scale_raises_the_alarm():
    row = {"val_active_units": 3, "val_sample_spread_mm": 1.0, "val_wet_fraction_samples": 0.5,
           "val_wet_fraction_obs": 0.5, "val_spatial_std_ratio": 1.0, "val_active_scales": "x8:0/4;x4:2/4"}  # fmt: skip
    assert collapse_alarms(row, 2.0, 8) == ["posterior collapse at scale x8: 0 of 4 latent maps active"]


def test_the_censored_output_trains_and_its_samples_are_exactly_dry_in_mm(prepared, tmp_path):
    from precip_cvae.data.dataset import PreparedData
    from precip_cvae.generator import Generator

    config = _config(prepared, tmp_path, "train.epochs=2", "model.output=censored", "loss.crps_weight=1.0",
                     "loss.crps_members=2")  # fmt: skip
    fit(config, progress=False)
    data = PreparedData(prepared)
    gen = Generator.from_outputs(data, tmp_path, None, torch.device("cpu"))
    np.testing.assert_array_equal(gen.model.decoder.output.dry_z[0, 0].numpy(), data.normalization.dry_z)
    with torch.no_grad():  # two epochs leave it wet nearly everywhere: lower its output so that both parts occur
        gen.model.decoder.out_conv.bias -= 0.5
    _, z, mm = gen.draw(list(range(6)), 4, "prior", 1.0, gen.rng(0))
    valid = data.valid_mask
    z, mm, dry_z = z[:, :, valid], mm[:, :, valid], data.normalization.dry_z[valid]
    assert (z >= dry_z).all()
    censored = z == dry_z
    assert 0.0 < censored.mean() < 1.0
    assert (mm[censored] == 0.0).all()  # exactly dry in mm/day
    assert (mm[z > dry_z + 1e-3] > 0.0).all()


def test_a_checkpoint_written_before_the_new_options_loads_as_the_reference_design(prepared, tmp_path):
    from precip_cvae.model import LinearHead

    config = load_config("reference", [f"data.data_root={prepared}", f"data.outputs_root={tmp_path}", *TINY,
                                       "train.epochs=1"])  # fmt: skip
    fit(config, progress=False)
    state = load_checkpoint(tmp_path / "checkpoints" / "cvae_last.pt")
    for key in ("latent_scales", "latent_channels", "output"):  # what a pre-issue-10 checkpoint lacks
        del state["config"]["model"][key]
    model = build_model_from_checkpoint(state)
    assert isinstance(model.decoder.output, LinearHead) and len(model.decoder.latents) == 0
    assert model.config.prior == "standard"


def test_a_checkpoint_written_before_the_width_cap_loads_with_the_cap_of_8():
    # the decoder's widths were capped at 8 x base_filters until the key existed; on a grid of three scales (48 x 40)
    # a cap of 2 is another model (8 channels at the coarsest scale instead of 16)
    from dataclasses import asdict

    from precip_cvae.config import REFERENCE, ModelConfig
    from precip_cvae.model import CVAE

    config = ModelConfig(**{**REFERENCE["model"], "d_z": 4, "base_filters": 4, "d_x": 8, "d_y": 8,
                            "decoder_width_cap": 8})  # fmt: skip
    model = CVAE(2, 1, (6, 5), (48, 40), config)
    assert model.decoder.n_up == 2
    written = {k: v for k, v in asdict(config).items() if k != "decoder_width_cap"}
    state = {"shapes": {"in_channels": 2, "statics": ["elevation"], "lr_shape": [6, 5], "hr_shape": [48, 40]},
             "config": {"model": written}, "model_state_dict": model.state_dict()}  # fmt: skip
    loaded = build_model_from_checkpoint(state)
    assert loaded.config.decoder_width_cap == 8
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
