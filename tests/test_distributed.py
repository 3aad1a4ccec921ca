"""Data-parallel training: a torchrun of 2 CPU processes (gloo) trains the weights one process trains with the same
global batch; the pieces that make it so, by hand."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import SequentialSampler

from precip_cvae.checkpoint import load_checkpoint
from precip_cvae.distributed import BlockSampler, Context, RankNoise, local_batch
from precip_cvae.errors import InputError
from precip_cvae.model._layers import _gaussian_noise
from tests.cases import TINY_MODEL


def test_each_rank_takes_its_block_of_every_global_batch():
    base = SequentialSampler(range(11))  # global batches of 2 x 2: [0 1 | 2 3], [4 5 | 6 7], the rest dropped
    assert list(BlockSampler(base, 2, Context(0, 2))) == [0, 1, 4, 5]
    assert list(BlockSampler(base, 2, Context(1, 2))) == [2, 3, 6, 7]
    assert len(BlockSampler(base, 2, Context(1, 2))) == 4
    assert list(BlockSampler(base, 3, Context(0, 1))) == [0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_each_rank_draws_its_rows_of_the_global_batch_noise():
    full = torch.randn((6, 3), generator=torch.Generator().manual_seed(4))
    for rank in (0, 1):
        noise = RankNoise(torch.Generator().manual_seed(4), Context(rank, 2))
        part = _gaussian_noise((3, 3), torch.zeros(1, dtype=torch.float64), noise)
        assert part.dtype == torch.float64
        torch.testing.assert_close(part.float(), full[3 * rank : 3 * rank + 3], rtol=0, atol=0)


def test_the_global_batch_must_split_evenly():
    assert local_batch(8, Context(1, 4)) == 2
    with pytest.raises(InputError, match="train.batch_size: 6 days cannot be split evenly over 4 processes"):
        local_batch(6, Context(0, 4))


def test_the_cli_leaves_the_process_group_it_joined(tmp_path):
    # a group left to the interpreter's shutdown could abort a finished rank (SIGABRT after "done"): main() leaves it,
    # after a failed command too
    from precip_cvae.cli import main

    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    assert torch.distributed.is_initialized()
    assert main(["sample", "--config", str(tmp_path / "missing.yaml"), "--quiet"]) == 2
    assert not torch.distributed.is_initialized()


def _launcher(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "precip_cvae"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc_per_node", str(processes), "-m", "precip_cvae"]  # fmt: skip


def _run(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _train(prepared: Path, out: Path, processes: int, epochs: int = 2, resume: bool = False) -> dict:
    # the default generator (spatial latents, prior draws for the ensemble term), tiny, 8-day global batches
    args = [f"data.data_root={prepared}", f"data.outputs_root={out}", *TINY_MODEL, f"train.epochs={epochs}",
            "model.latent_channels=2", "train.lr=0.003", "train.save_every=1", "--quiet"]  # fmt: skip
    done = _run([*_launcher(processes), "train", *(["--resume"] if resume else []), *args])
    return {"weights": load_checkpoint(out / "checkpoints" / "cvae_last.pt")["model_state_dict"], "stdout": done.stdout}


def _assert_same_weights(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=2e-6, msg=key)


def test_two_processes_train_the_weights_of_one_and_resume_to_them(prepared, tmp_path):
    one = _train(prepared, tmp_path / "one", 1)
    two = _train(prepared, tmp_path / "two", 2)
    assert two["stdout"].count("checkpoints:") == 1  # rank 0 alone reports (and writes)
    _assert_same_weights(two["weights"], one["weights"])
    # the second epoch moved the weights far more than that tolerance (before the ranks' masked means shared one
    # denominator, the ranks' different numbers of extreme pixels put them 0.02 apart)
    first_epoch = load_checkpoint(tmp_path / "one" / "checkpoints" / "cvae_epoch_001.pt")["model_state_dict"]
    assert (
        max(float((v - first_epoch[k]).abs().max()) for k, v in one["weights"].items() if v.is_floating_point()) > 1e-3
    )
    # each rank validated every other batch and the ranks merged: the log's validation scores are one process's
    rows_one, rows_two = (
        list(csv.DictReader(open(tmp_path / run / "logs" / "train_log.csv"))) for run in ("one", "two")
    )
    assert len(rows_one) == len(rows_two) == 2
    for row_one, row_two in zip(rows_one, rows_two, strict=True):
        for key in ("val_loss", "val_CRPS", "val_twCRPS_P95", "val_MAE_all", "val_spatial_std_ratio", "train_loss"):
            assert float(row_two[key]) == pytest.approx(float(row_one[key]), rel=1e-4), key
    # a DDP run stopped after epoch 1 and resumed under DDP ends where the uninterrupted one does
    _train(prepared, tmp_path / "resumed", 2, epochs=1)
    resumed = _train(prepared, tmp_path / "resumed", 2, resume=True)
    _assert_same_weights(resumed["weights"], one["weights"])


def test_two_processes_evaluate_what_one_does(trained, tmp_path):
    # each process scores every other batch of days (batches of 4 here) and rank 0 merges: metrics.json is the same
    out = {}
    for processes in (1, 2):
        out[processes] = tmp_path / f"evaluation{processes}"
        config = Path(trained.data.outputs_root) / "config.yaml"
        done = _run([*_launcher(processes), "evaluate", "--config", str(config), "--K", "4", "--out",
                     str(out[processes]), "--quiet", "evaluate.batch_size=4"])  # fmt: skip
        assert done.stdout.count("report:") == 1
    one, two = (json.loads((out[p] / "metrics.json").read_text()) for p in (1, 2))
    assert one["days"] == two["days"] and len(one["days"]) > 8 and one["heavy_days"] == two["heavy_days"]
    for name, system in one["systems"].items():
        for part in ("all", "heavy"):
            expected, got = system[part] or {}, two["systems"][name][part] or {}
            assert expected.keys() == got.keys()
            for key, value in expected.items():
                np.testing.assert_allclose(np.asarray(got[key], float), np.asarray(value, float), rtol=1e-6,
                                           atol=1e-9, err_msg=f"{name} {part} {key}")  # fmt: skip


def test_two_processes_sample_the_files_of_one(trained, tmp_path):
    # each process draws and gates every other batch (batches of 2 days), rank 0 writes them all in order
    out = {}
    for processes in (1, 2):
        out[processes] = tmp_path / f"synth{processes}"
        config = Path(trained.data.outputs_root) / "config.yaml"
        done = _run([*_launcher(processes), "sample", "--config", str(config), "--K", "3", "--days", "split:test",
                     "--mode", "prior", "--out", str(out[processes]), "--keep-rejected", "--quiet",
                     "sampling.batch_size=2"])  # fmt: skip
        assert done.stdout.count("samples ->") == 1
    one, two = (json.loads((out[p] / "manifest.json").read_text()) for p in (1, 2))
    assert len(one["samples"]) > 6 and one["samples"] == two["samples"] and one["summary"] == two["summary"]
    files = sorted(p.relative_to(out[1]) for p in out[1].rglob("*.npy"))
    assert len(files) >= 2 * len(one["samples"])
    assert files == sorted(p.relative_to(out[2]) for p in out[2].rglob("*.npy"))
    for name in files:
        np.testing.assert_allclose(np.load(out[2] / name), np.load(out[1] / name), rtol=1e-6, atol=1e-6, err_msg=name)
