"""CUDA paths: they run where a GPU is present and are skipped elsewhere (CI has none).

Every other test pins ``train.device=cpu``; these ask for ``cuda`` explicitly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.cases import TINY_MODEL, record_auto_batches

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _config(prepared, out, *extra):
    from precip_cvae.config import load_config

    return load_config(None, [f"data.data_root={prepared}", f"data.outputs_root={out}", *TINY_MODEL,
                              "model.base_filters=8", "model.d_z=8", "loss.crps_members=2", *extra])  # fmt: skip


def test_a_forward_pass_agrees_between_cpu_fp32_and_cuda_bf16(prepared, tmp_path):
    """The default generator decoding its prior mean (temperature 0: no noise) for the same days and weights."""
    from precip_cvae.data.dataset import PreparedData
    from precip_cvae.generator import build_model

    config = _config(prepared, tmp_path)
    data = PreparedData(prepared)
    torch.manual_seed(0)
    model = build_model(data, config.model).eval()
    days = data.ids("test")[:4]
    inputs = torch.from_numpy(np.stack([data.inputs(d) for d in days]))
    statics = torch.from_numpy(data.statics)[None]
    with torch.no_grad():
        cpu = model.sample(inputs, statics, n_samples=1, temperature=0.0)
        model.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            gpu = model.sample(inputs.cuda(), statics.cuda(), n_samples=1, temperature=0.0).float().cpu()
    assert gpu.shape == cpu.shape and torch.isfinite(gpu).all()
    # bf16 keeps 8 bits of mantissa: the fields agree to a few per cent of their spread
    assert (gpu - cpu).abs().mean() < 0.02 * cpu.std() + 1e-4


def test_train_sample_and_evaluate_on_cuda_with_mixed_precision(prepared, tmp_path):
    from precip_cvae.config import EvaluateConfig
    from precip_cvae.evaluate import run_evaluate
    from precip_cvae.sample import SampleOptions, run_sample
    from precip_cvae.train import fit
    from tests.cases import PERMISSIVE

    config = _config(prepared, tmp_path, "train.device=cuda", "train.amp=true", "train.epochs=2")
    result = fit(config, progress=False)
    assert np.isfinite(result["last_row"]["val_CRPS"]) and result["last_row"]["skipped_steps"] == 0
    summary = run_sample(config, SampleOptions(mode="prior", K=2, days="heavy_only"), PERMISSIVE,
                         out_dir=tmp_path / "synth", progress=False)  # fmt: skip
    assert summary["samples"] > 0
    metrics = run_evaluate(config, EvaluateConfig(K=4, split="test", baselines=("climatology",)),
                           out_dir=tmp_path / "evaluation", progress=False)  # fmt: skip
    assert (tmp_path / "evaluation" / "metrics.json").is_file() and metrics


def test_the_downstream_experiment_gives_the_same_numbers_on_cuda_as_on_the_cpu(prepared, tmp_path):
    from precip_cvae.downstream.experiment import run_experiment

    results = {}
    for device in ("cpu", "cuda"):
        config = _config(prepared, tmp_path / device, f"train.device={device}", "train.amp=false")
        options = replace(config.experiment, arms=("baseline",), seeds=1, steps=6, batch_size=4, filters=8,
                          n_blocks=2, ema=0.5, val_every=3)  # fmt: skip
        report = run_experiment(config, options, tmp_path / device / "experiment", progress=False)
        results[device] = report["summary"]["baseline"]["all"]["MAE_all"]["value"]["mean"]
    assert results["cuda"] == pytest.approx(results["cpu"], rel=1e-4)


def test_auto_batch_is_measured_on_the_gpu(prepared, tmp_path, monkeypatch):
    from precip_cvae.train import Trainer

    measured = record_auto_batches(monkeypatch)
    config = _config(prepared, tmp_path, "train.device=cuda", "train.amp=true", "train.batch_size=auto",
                     "train.lr_scaling=sqrt")  # fmt: skip
    trainer = Trainer(config, progress=False)
    assert trainer.config.train.batch_size in measured and measured[6] > 0
    assert trainer.config.train.lr_scaling == "none"


def test_a_compiled_training_step_on_cuda_matches_eager(prepared, tmp_path):
    """train.compile=reduce-overhead (CUDA graphs) under bf16 autocast: four steps agree with eager ones to bf16's
    rounding, and draw the same noise (the generator's state after them is the same)."""
    from precip_cvae.compiled import CompiledForward
    from tests.test_compiled import four_steps

    cuda = ["train.device=cuda", "train.amp=true"]
    eager, eager_losses = four_steps(prepared, tmp_path / "eager", *cuda)
    compiled, compiled_losses = four_steps(prepared, tmp_path / "compiled", *cuda, "train.compile=reduce-overhead")
    assert isinstance(compiled.step_forward, CompiledForward)
    assert compiled_losses == pytest.approx(eager_losses, rel=2e-2)
    assert torch.equal(eager.noise.get_state(), compiled.noise.get_state())


def test_scores_on_the_gpu_equal_numpy_day_by_day():
    """Validation's and evaluate's scores on the GPU (Scores.add_tensors, EnsembleScores.add_device with CUDA tensors)
    against NumPy day by day."""
    from tests.metrics.test_device import (
        _fields,
        _scores,
        assert_same_scores,
        day_by_day_and_batched,
        ensemble_scores_compared,
    )

    for K in (2, 16):
        assert_same_scores(*day_by_day_and_batched(K, "cuda"), days=5)
        ensemble_scores_compared(K, "cuda")  # every score evaluate keeps
    ens, obs, mask = (torch.from_numpy(x).cuda() for x in _fields(2))
    on_gpu, on_cpu = _scores(), _scores()
    on_gpu.add_tensors(ens, obs, mask)
    on_cpu.add_tensors(ens.cpu(), obs.cpu(), mask.cpu())
    assert_same_scores(on_cpu, on_gpu, days=5)


def test_group_norm_stays_in_bf16_where_cuda_autocast_upcasts_it():
    # the premise of model._layers.GroupNorm: CUDA's autocast runs a plain GroupNorm in float32 (and the map after it
    # stays float32 until the next convolution); the model's layer keeps bf16, within bf16's rounding of float32
    from precip_cvae.model._layers import GroupNorm

    torch.manual_seed(0)
    norm = GroupNorm(4, 16).cuda()
    plain = torch.nn.GroupNorm(4, 16).cuda()
    plain.load_state_dict(norm.state_dict())
    x = torch.randn(2, 16, 32, 24, device="cuda").to(torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        upcast, kept = plain(x), norm(x)
    assert upcast.dtype == torch.float32 and kept.dtype == torch.bfloat16
    torch.testing.assert_close(kept.float(), upcast, rtol=0, atol=0.05)
