"""`train.compile`: the compiled training step draws the noise an eager one draws and trains to the same weights."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from precip_cvae import loop
from precip_cvae.compiled import CompiledForward, NoiseRecorder, NoiseTape
from precip_cvae.config import load_config
from precip_cvae.errors import InputError
from precip_cvae.model._layers import _gaussian_noise
from precip_cvae.train import Trainer, fit
from tests.cases import TINY_MODEL


def _config(data: Path, out: Path, *extra: str):
    return load_config(None, [f"data.data_root={data}", f"data.outputs_root={out}", *TINY_MODEL,
                              "loss.crps_members=2", *extra])  # fmt: skip


def test_the_recorder_and_the_tape_hand_out_the_generators_stream():
    like = torch.zeros(1)
    eager = torch.Generator().manual_seed(3)
    expected = [_gaussian_noise(s, like, eager) for s in [(2, 3), (4,), (1, 2, 2)]]
    recorder = NoiseRecorder(torch.Generator().manual_seed(3))
    drawn = [_gaussian_noise(s, like, recorder) for s in [(2, 3), (4,), (1, 2, 2)]]
    assert recorder.shapes == [(2, 3), (4,), (1, 2, 2)]
    assert all(torch.equal(a, b) for a, b in zip(drawn, expected, strict=True))
    ahead = torch.Generator().manual_seed(3)
    tape = NoiseTape.ahead(ahead, recorder.shapes)
    assert all(torch.equal(_gaussian_noise(s, like, tape), e) for s, e in zip(recorder.shapes, expected, strict=True))
    assert tape.used == 3 and torch.equal(ahead.get_state(), eager.get_state())
    with pytest.raises(RuntimeError, match=r"asks for \(3, 2\)"):
        NoiseTape.ahead(ahead, [(2, 3)]).randn((3, 2))


def four_steps(prepared: Path, out: Path, *extra: str) -> tuple[Trainer, list[float]]:
    """A trainer of the default generator (tiny size) with ``extra`` overrides after four training steps on one
    batch, and the steps' losses."""
    trainer = Trainer(_config(prepared, out, *extra), progress=False)
    batch = trainer.to_device(next(iter(trainer.train_loader(0))))
    losses = []
    for _ in range(4):
        terms = loop.train_step(trainer.model, batch, trainer.optimizer, trainer.loss_fn(0.3),
                                forward=trainer.step_forward, generator=trainer.noise,
                                autocast_dtype=trainer.precision.dtype)  # fmt: skip
        losses.append(terms["total"])
    return trainer, losses


def test_compiled_steps_match_eager_steps_and_leave_the_same_generator_state(prepared, tmp_path):
    """Four training steps: the first eager (noting the draws), the next three compiled; the weights agree with four
    eager steps to float rounding, the noise generator's state exactly."""
    eager, eager_losses = four_steps(prepared, tmp_path / "eager")
    compiled, compiled_losses = four_steps(prepared, tmp_path / "compiled", "train.compile=default")
    assert isinstance(compiled.step_forward, CompiledForward) and len(compiled.step_forward.shapes) == 1
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert eager_losses[-1] != pytest.approx(eager_losses[0], rel=1e-3)  # the steps moved the weights
    assert torch.equal(eager.noise.get_state(), compiled.noise.get_state())
    for (name, a), b in zip(eager.model.state_dict().items(), compiled.model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_a_compiled_run_resumes_to_the_uninterrupted_one(prepared, tmp_path):
    compiled = "train.compile=default"
    fit(_config(prepared, tmp_path / "a", "train.epochs=2", compiled), progress=False)
    fit(_config(prepared, tmp_path / "b", "train.epochs=1", compiled), progress=False)
    fit(_config(prepared, tmp_path / "b", "train.epochs=2", compiled), resume=True, progress=False)
    fit(_config(prepared, tmp_path / "c", "train.epochs=2"), progress=False)
    states = [torch.load(tmp_path / r / "checkpoints" / "cvae_last.pt", weights_only=True) for r in "abc"]
    for key, value in states[0]["model_state_dict"].items():
        for other in states[1:]:
            torch.testing.assert_close(other["model_state_dict"][key], value, rtol=1e-3, atol=1e-4, msg=key)
    rows = [list(csv.DictReader(open(tmp_path / r / "logs" / "train_log.csv"))) for r in "abc"]
    for other in rows[1:]:
        assert float(other[-1]["val_loss"]) == pytest.approx(float(rows[0][-1]["val_loss"]), rel=1e-3)


def test_a_bad_compile_mode_names_the_key(prepared, tmp_path):
    with pytest.raises(InputError, match="train.compile"):
        _config(prepared, tmp_path, "train.compile=fast")
    with pytest.raises(InputError, match="train.compile"):
        CompiledForward(lambda m, b, g: None, "none")


def test_compiling_under_torchrun_is_refused_with_one_line(prepared, tmp_path, monkeypatch):
    from precip_cvae import distributed

    monkeypatch.setattr(distributed, "context", lambda device: distributed.Context(rank=0, world=2))
    with pytest.raises(InputError, match="train.compile: not supported under torchrun"):
        Trainer(_config(prepared, tmp_path, "train.compile=default"), progress=False)
