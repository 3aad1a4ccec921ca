"""train.batch_size=auto and train.lr_scaling: the batch chosen from measured rates, the learning rate that goes with
it, and what a run records and a resume takes back."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from precip_cvae import batching
from precip_cvae.batching import AUTO_GAIN, choose_batch, resolve, scaled_lr
from precip_cvae.config import load_config
from precip_cvae.errors import InputError
from precip_cvae.train import Trainer, cvae_forward, fit
from tests.cases import TINY_MODEL, record_auto_batches


def test_the_learning_rate_scales_by_each_rule():
    assert scaled_lr(1e-3, 24, 6, "none") == 1e-3
    assert scaled_lr(1e-3, 24, 6, "sqrt") == pytest.approx(2e-3, rel=1e-12)
    assert scaled_lr(1e-3, 24, 6, "linear") == pytest.approx(4e-3, rel=1e-12)
    assert scaled_lr(1e-3, 3, 6, "sqrt") == pytest.approx(1e-3 / math.sqrt(2), rel=1e-12)


@pytest.mark.parametrize(
    "rates, largest, expected",
    [
        ({6: 100, 12: 190, 24: 300, 48: 330, 96: 900}, 10_000, 24),  # 48 gains 10 %: stop there, never try 96
        ({6: 100, 12: 110}, 10_000, 6),  # a flat rate (a CPU): the reference's batch
        ({6: 100, 12: 200, 24: 400, 48: None}, 10_000, 24),  # 48 does not fit
        ({6: 100, 12: 200, 24: 400, 48: 800}, 30, 24),  # no batch beyond the training days
        ({6: 100}, 4, 6),  # fewer training days than the first batch: the first batch (repeated days)
    ],
)
def test_auto_doubles_while_the_rate_gains_enough(rates, largest, expected):
    tried = []

    def rate(batch):
        tried.append(batch)
        return rates[batch]

    chosen, measured = choose_batch(rate, largest)
    assert chosen == expected
    assert measured == {b: rates[b] for b in tried if rates[b] is not None}
    assert tried == list(batching.AUTO_BATCHES[: len(tried)])  # in order, from the first
    assert max(tried) <= max(expected * 2, batching.AUTO_BATCHES[0])  # one doubling past the choice at most
    exact = {6: 100.0, 12: 100.0 * AUTO_GAIN}  # exactly the gain: taken
    assert choose_batch(lambda b: exact.get(b), 10_000)[0] == 12


def _config(*extra):
    return load_config(None, ["train.lr=0.001", *extra])


def test_resolve_records_numbers_and_takes_a_checkpoints_numbers_back():
    config, said = resolve(_config("train.batch_size=auto", "train.lr_scaling=sqrt", "train.lr_reference_batch=3"),
                           rate=None, train_days=100)  # fmt: skip
    assert (config.train.batch_size, config.train.lr_scaling) == (6, "none")
    assert config.train.lr == pytest.approx(1e-3 * math.sqrt(2), rel=1e-12)
    assert "auto: 6 (measured on CUDA only)" in said and "sqrt(6/3)" in said
    rates = {6: 10.0, 12: 30.0, 24: 31.0}
    config, said = resolve(_config("train.batch_size=auto", "train.lr_scaling=linear", "train.accumulate=2"),
                           rate=rates.get, train_days=100)  # fmt: skip
    assert config.train.batch_size == 12 and config.train.lr == pytest.approx(4e-3, rel=1e-12)  # 12 x 2 / 6
    assert "6: 10, 12: 30, 24: 31" in said
    same = _config("train.batch_size=8")
    assert resolve(same, rate=None, train_days=100) == (same, None)  # nothing to resolve: not even measured
    stored = {"batch_size": 48, "lr": 0.0042}
    config, said = resolve(_config("train.batch_size=auto", "train.lr_scaling=sqrt"), rate=rates.get,
                           train_days=100, stored=stored)  # fmt: skip
    assert (config.train.batch_size, config.train.lr, config.train.lr_scaling) == (48, 0.0042, "none")
    with pytest.raises(InputError, match="train.batch_size: auto is measured on one GPU; under torchrun"):
        resolve(_config("train.batch_size=auto"), rate=rates.get, train_days=100, world=2)
    with pytest.raises(InputError, match="train.batch_size: a number of days or auto, got 'atuo'"):
        _config("train.batch_size=atuo")
    with pytest.raises(InputError, match="train.lr_scaling must be one of"):
        _config("train.lr_scaling=cubic")


def test_a_run_records_the_resolved_numbers_and_a_resume_keeps_them(prepared, tmp_path):
    out = tmp_path / "run"
    base = [f"data.data_root={prepared}", f"data.outputs_root={out}", *TINY_MODEL, "train.save_every=1"]
    fit(load_config(None, [*base, "train.epochs=1", "train.batch_size=4", "train.lr_scaling=linear",
                           "train.lr_reference_batch=2"]), progress=False)  # fmt: skip
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert (saved["batch_size"], saved["lr"], saved["lr_scaling"]) == (4, pytest.approx(2e-3), "none")
    # resumed with auto (6 here) and sqrt scaling: the checkpoint's 4 days and 2e-3 go on
    result = fit(load_config(None, [*base, "train.epochs=2", "train.batch_size=auto", "train.lr_scaling=sqrt"]),
                 resume=True, progress=False)  # fmt: skip
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert (saved["batch_size"], saved["lr"]) == (4, pytest.approx(2e-3))
    assert result["last_row"]["lr"] == pytest.approx(2e-3)


def test_measuring_a_batch_leaves_the_model_and_every_random_state_alone(prepared, tmp_path):
    config = load_config(None, [f"data.data_root={prepared}", f"data.outputs_root={tmp_path}", *TINY_MODEL])
    trainer = Trainer(config, progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng, noise = torch.get_rng_state(), trainer.noise.get_state()
    rate = trainer.samples_per_s(12, steps=2)  # more days than one batch: days repeat
    assert rate is not None and rate > 0
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(trainer.noise.get_state(), noise)
    assert not trainer.optimizer.state  # the run's optimizer never stepped


def test_auto_measures_its_batches_while_the_trainer_is_built(prepared, tmp_path, monkeypatch):
    """What a GPU does, here on the CPU: ``auto`` times training steps of the run's own model (its prior draws
    included) before the compiled step and the run's loss exist (it failed on CUDA with an AttributeError)."""
    monkeypatch.setattr(batching, "MEASURED_ON", ("cpu",))
    seen, measured = [], record_auto_batches(monkeypatch)

    def forward(self, *args):
        seen.append(self.n_prior)
        return cvae_forward(*args, self.n_prior)

    monkeypatch.setattr(Trainer, "forward", forward)
    config = load_config(None, [f"data.data_root={prepared}", f"data.outputs_root={tmp_path}", *TINY_MODEL,
                                "train.batch_size=auto", "loss.crps_weight=1", "loss.crps_members=2"])  # fmt: skip
    trainer = Trainer(config, progress=False)
    assert trainer.config.train.batch_size in measured and measured[6] > 0
    assert set(seen) == {2} and len(seen) == 4 * len(measured)  # 4 steps a batch (one of warm-up), 2 prior draws
    assert not trainer.optimizer.state
