"""A run that starts and cannot finish exits 1 with one line saying what to change, not 2 ("bad input") and not a
traceback, and leaves the last good checkpoint loadable (issue 13 point 1, last sentence)."""

from __future__ import annotations

from pathlib import Path

import torch

from precip_cvae.checkpoint import load_checkpoint
from precip_cvae.cli import main
from tests.cases import TINY_MODEL


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "WARNING" not in line]


def test_a_diverging_training_exits_1_and_keeps_its_last_good_checkpoint(prepared, tmp_path, capsys):
    # no mock: a learning rate of 1e30 sends the weights to infinity after the first step, every later loss is NaN,
    # and the second epoch has no finite step
    out = tmp_path / "run"
    argv = ["train", f"data.data_root={prepared}", f"data.outputs_root={out}", *TINY_MODEL, "train.epochs=3",
            "train.lr=1e30", "train.grad_clip=0", "--quiet"]  # fmt: skip
    assert main(argv) == 1
    err = _error_lines(capsys)
    assert len(err) == 1 and "training diverged" in err[0] and "lower train.lr" in err[0], err
    state = load_checkpoint(out / "checkpoints" / "cvae_last.pt")
    assert state["epoch"] == 0


def test_out_of_memory_in_training_exits_1_with_what_to_lower(prepared, tmp_path, capsys, monkeypatch):
    import precip_cvae.loop

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(precip_cvae.loop, "train_step", out_of_memory)
    argv = ["train", f"data.data_root={prepared}", f"data.outputs_root={tmp_path / 'run'}", *TINY_MODEL, "--quiet"]
    assert main(argv) == 1
    err = _error_lines(capsys)
    assert len(err) == 1 and "out of memory" in err[0] and "train.batch_size" in err[0], err


def test_out_of_memory_while_sampling_exits_1_and_writes_nothing(trained, tmp_path, capsys, monkeypatch):
    from precip_cvae.generator import Generator

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")

    monkeypatch.setattr(Generator, "draw", out_of_memory)
    config = Path(trained.data.outputs_root) / "config.yaml"
    assert main(["sample", "--config", str(config), "--out", str(tmp_path / "synth"), "--quiet"]) == 1
    err = _error_lines(capsys)
    assert len(err) == 1 and "out of memory on the device" in err[0] and "--batch-size" in err[0], err
    assert list(tmp_path.iterdir()) == []
