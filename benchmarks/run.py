"""Where the time goes, as ratios to references measured in the same run on the same machine.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--threads 2] [--compile MODE] [--json benchmark.json]

Rows (absolute numbers for information, the ratio is the figure to compare across machines):

- ``matmul``: the reference rate, the best of square matrix products (n = 2048 and 3072 with --quick, also 4096
  without; also 8192 on a GPU) in float32 on the CPU, and in TF32 and bf16 on a GPU.
- ``train``: one training step of the default generator (forward, backward, AdamW through the real loss) at the
  reference geometry (6 × 13 × 11 → 156 × 132, batch 6; batch 2 with --quick) and at the demo size. FLOPs per sample
  are counted over the whole step by ``torch.utils.flop_counter`` (matrix products and convolutions, backward
  included); the ratio is the achieved FLOP rate ÷ the matmul rate in the same precision (bf16 with train.amp on a
  GPU). A ratio above 1 is a measuring error and stops the run.
- ``train.compile``: the training step at the reference geometry, batch 6, with ``train.compile`` (``--compile``,
  "default"; "none" skips the row) ÷ the same step eagerly, and its achieved FLOP rate ÷ the matmul rate (FLOPs
  counted eagerly). The compile time is printed in the row's name.
- ``sample``: drawing K = 16 prior samples per day, the same ratio.
- ``slices``: on a CPU, the training step at the reference geometry (batch 6) and a day's K = 16 draws with the
  fine-scale layers computed over slices of the batch that fit the caches (:mod:`precip_cvae.slices`, the default)
  ÷ the whole batch at once (above 1: the slices help).
- ``loader``: the training DataLoader over a small prepared benchmark: samples/s ÷ what the training step consumes
  (above 1: the step never waits for data), and ÷ a contiguous memory-mapped read of the same bytes (at most 1: the
  per-day files' overhead).
- ``epoch``: one real training epoch of the demo-size generator (validation and checkpoints included) per training
  pixel-day, on twice the days and on half the grid ÷ the base dataset's (1: the cost is flat per pixel-day).
- ``projection``: one real epoch of the default generator at the reference geometry (a synthetic benchmark of 240
  days, 120 with --quick, or --epoch-days; validation and checkpoints included; ``train.batch_size`` 6, or
  ``--batch`` on a GPU: a number or ``auto``, with the square-root learning-rate rule)
  scaled to the reference's run, 80 epochs over 14,500 days, in minutes ÷ issue 12's target of 10 minutes; with
  ``--projection-compile MODE`` also with ``train.compile`` (two epochs, the second timed).
- ``bf16``: on a GPU, training samples/s with bf16 autocast ÷ without, at batch 6, 32 and 128 (below 1: bf16 is
  slower at that batch).
- ``experiment``: training steps/s of the downstream experiment's SRDRN with its batches drawn from memory ÷ read
  from disk by a DataLoader (above 1: memory is faster).
- ``evaluate``: test days/s of `evaluate` at K = 16 (model, analogs, climatology, oracle) ÷ drawing the model's
  samples alone: the share of its time spent drawing (the rest is baselines, scoring and the figures); and the rate
  per further test day, from the test splits of two dataset sizes (the fixed costs, figures and imports, cancel);
  where at least 4 cores are there, the same per further day with ``evaluate.workers`` (cores − 2, at most 8)
  ÷ without.
- ``prepare``: a random SRDRN directory at the reference geometry, 2,000 days (and 15,000 without --quick): seconds
  ÷ copying the directory, and the peak resident memory ÷ the size of its obs arrays (the libraries take a fixed
  ~300 MiB, so the ratio falls below 1 only for large inputs: it streams).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

REFERENCE_GEOMETRY = (6, (13, 11), (156, 132))
DEMO_GEOMETRY = (6, (8, 7), (96, 84))
DEMO_MODEL = ["model.d_z=16", "model.base_filters=16", "model.d_x=64", "model.d_y=64", "loss.crps_members=2"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Seconds per call: one untimed call, then the fastest of ``repeats`` timed ones."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return best


def matmul_rate(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...]) -> float:
    """The machine's matrix-product rate: the best FLOP/s (2 n³ per product) over square sizes n (a single size can
    hit a slow path of the BLAS: on a 2-core machine 2048³ ran at 107 GFLOP/s and 3072³ at 156)."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        best = max(best, 2 * n**3 / _timed(lambda a=a, b=b: a @ b, device, 3))
    return best


def model_and_batch(config, geometry, batch_size: int, device: torch.device):
    """A fresh generator of ``config`` for ``geometry`` (channels, lr_shape, hr_shape; 4 static maps, identity
    normalization), a random batch for it, and the normalization."""
    from precip_cvae.data.normalize import Normalization
    from precip_cvae.model import CVAE

    channels, lr_shape, hr_shape = geometry
    torch.manual_seed(0)
    identity = Normalization(np.zeros(hr_shape), np.ones(hr_shape))
    model = CVAE(channels, 4, lr_shape, hr_shape, config.model, identity.dry_z).to(device)
    batch = {
        "inputs": torch.randn(batch_size, channels, *lr_shape, device=device),
        "target": torch.randn(batch_size, 1, *hr_shape, device=device),
        "mask": torch.ones(batch_size, 1, *hr_shape, dtype=torch.bool, device=device),
        "land": torch.ones(batch_size, 1, *hr_shape, dtype=torch.bool, device=device),
        "statics": torch.rand(1, 4, *hr_shape, device=device),
    }
    return model, batch, identity


def train_step_rate(config, geometry, batch_size: int, device: torch.device, amp: bool, repeats: int) -> dict:
    """Samples/s and measured FLOPs per sample (forward + backward) of a generator's training step (``config``: its
    model, loss and ``train.compile``, applied as the trainer applies it: :func:`~precip_cvae.compiled.compile_step`)
    at ``geometry`` (channels, lr_shape, hr_shape). FLOPs are counted on the first step, which runs eagerly; a
    compiled step is timed after it compiled."""
    from precip_cvae.compiled import compile_step
    from precip_cvae.loop import Precision, train_step
    from precip_cvae.losses import cvae_loss
    from precip_cvae.train import cvae_forward

    model, batch, identity = model_and_batch(config, geometry, batch_size, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    precision = Precision.for_device(device, amp)
    zeros = torch.zeros(geometry[2], device=device)
    n_prior = config.loss.crps_members if config.loss.crps_weight > 0 else 0
    noise = torch.Generator(device=device).manual_seed(0)

    def loss(out, b, beta):
        return cvae_loss(out, b["target"], b["mask"], b["land"], zeros, identity, 2.0, config.loss, beta)

    def forward(m, b, g):
        return cvae_forward(m, b, g, n_prior)

    mode = config.train.compile
    if mode != "none":
        forward, loss = compile_step(model, forward, loss, mode)

    def step():
        train_step(model, batch, optimizer, lambda out, b: loss(out, b, 0.5), forward=forward, grad_clip=1.0,
                   scaler=precision.scaler, autocast_dtype=precision.dtype, generator=noise)  # fmt: skip

    with FlopCounterMode(display=False) as counter:
        step()
    if mode != "none":
        started = time.perf_counter()
        step()  # compiles
        _sync(device)
        compile_seconds = time.perf_counter() - started
    seconds = _timed(step, device, repeats)
    return {"flops_per_sample": counter.get_total_flops() / batch_size, "samples_per_s": batch_size / seconds,
            "batch_size": batch_size, "precision": str(precision.dtype or torch.float32),
            "compile_seconds": compile_seconds if mode != "none" else 0.0}  # fmt: skip


@torch.no_grad()
def sample_rate(config, geometry, days: int, K: int, device: torch.device, amp: bool, repeats: int) -> dict:
    """Prior samples/s (K per day) and FLOPs per sample of drawing them."""
    model, batch, _ = model_and_batch(config, geometry, days, device)
    model.eval()
    dtype = torch.bfloat16 if amp and device.type == "cuda" else None

    def draw():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model.sample(batch["inputs"], batch["statics"], n_samples=K)

    with FlopCounterMode(display=False) as counter:
        draw()
    seconds = _timed(draw, device, repeats)
    return {"flops_per_sample": counter.get_total_flops() / (days * K), "samples_per_s": days * K / seconds}


def loader_rates(root: Path, batch_size: int, n_batches: int) -> dict:
    """The training DataLoader's samples/s over a prepared dataset, and a contiguous memory-mapped read of the same
    bytes per sample."""
    from torch.utils.data import DataLoader

    from precip_cvae.data.dataset import DayDataset, PreparedData

    data = PreparedData(root)
    ids = data.ids("train")
    dataset = DayDataset(data, ids)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    n = min(n_batches * batch_size, len(ids))
    started = time.perf_counter()
    seen = 0
    for item in loader:
        seen += len(item["inputs"])
        if seen >= n:
            break
    loader_rate = seen / (time.perf_counter() - started)
    per_sample = data.inputs(ids[0]).nbytes + data.target(ids[0]).nbytes
    flat = root.parent / "contiguous.npy"
    np.save(flat, np.zeros((len(ids), per_sample // 4), np.float32))
    array = np.load(flat, mmap_mode="r")
    started = time.perf_counter()
    total = 0.0
    for start in range(0, seen, batch_size):
        total += float(np.asarray(array[start : start + batch_size]).sum())
    read_rate = seen / (time.perf_counter() - started)
    return {"loader_samples_per_s": loader_rate, "contiguous_samples_per_s": read_rate, "bytes_per_sample": per_sample}


def _fit_config(root: Path, device: str):
    from precip_cvae.config import load_config

    return load_config(None, [f"data.data_root={root / 'data'}", f"data.outputs_root={root / 'run'}", *DEMO_MODEL,
                              "train.epochs=1", f"train.device={device}", "train.batch_size=16",
                              "train.save_every=1000"])  # fmt: skip


def epoch_cost(root: Path, device: str) -> dict:
    """Seconds of one real training epoch (validation and checkpoint included) of the demo-size generator, per
    training pixel-day."""
    from precip_cvae.data.dataset import PreparedData
    from precip_cvae.train import fit

    result = fit(_fit_config(root, device), progress=False)
    data = PreparedData(root / "data")
    seconds = float(result["last_row"]["seconds"])
    pixel_days = len(data.ids("train")) * data.hr_shape[0] * data.hr_shape[1]
    return {"seconds": seconds, "per_pixel_day": seconds / pixel_days}


def prepared_benchmark(work: Path, days: int, lr_shape: tuple[int, int], hr_shape: tuple[int, int]) -> Path:
    """A synthetic benchmark of ``days`` days at these grids, prepared under ``work``; returns its data root."""
    from precip_cvae.data.prepare import PrepareOptions, prepare
    from precip_cvae.data.srdrn import read_srdrn_directory
    from precip_cvae.data.synthetic import SynthOptions, run_synth

    run_synth(SynthOptions(days=days, hr_shape=hr_shape, lr_shape=lr_shape, oracle_members=2), work / "bench",
              progress=False)  # fmt: skip
    prepare(read_srdrn_directory(work / "bench"), work, PrepareOptions(progress=False))
    return work / "data"


def reference_epoch(work: Path, device: str, days: int, batch_size: str, compile_mode: str = "none") -> dict:
    """Seconds of one real epoch of the default generator (validation and checkpoint included) on a synthetic
    benchmark of ``days`` days at the reference geometry, and the 80-epoch, 14,500-day run it projects to.
    ``batch_size``: a number, or "auto" (with the square-root learning-rate rule); the batch used is returned. With a
    ``train.compile`` mode, two epochs are run and the second is timed (the first compiles). The benchmark is made
    once under ``work`` and reused."""
    import shutil

    import yaml

    from precip_cvae.config import load_config
    from precip_cvae.data.dataset import PreparedData
    from precip_cvae.train import fit

    if not (work / "data").is_dir():
        prepared_benchmark(work, days, REFERENCE_GEOMETRY[1], REFERENCE_GEOMETRY[2])
    shutil.rmtree(work / "run", ignore_errors=True)
    epochs = 1 if compile_mode == "none" else 2
    overrides = [f"data.data_root={work / 'data'}", f"data.outputs_root={work / 'run'}", f"train.epochs={epochs}",
                 f"train.device={device}", f"train.batch_size={batch_size}", "train.lr_scaling=sqrt",
                 f"train.compile={compile_mode}"]  # fmt: skip
    config = load_config(None, overrides)
    result = fit(config, progress=False)
    seconds = float(result["last_row"]["seconds"])
    train_days = len(PreparedData(work / "data").ids("train"))
    used = yaml.safe_load((work / "run" / "config.yaml").read_text())["train"]["batch_size"]
    return {"seconds": seconds, "train_days": train_days, "batch_size": used,
            "projected_minutes": seconds / train_days * 14_500 * 80 / 60}  # fmt: skip


def experiment_step_rates(root: Path, device: torch.device, steps: int) -> dict:
    """Training steps/s of the downstream experiment's baseline arm (SRDRN with 16 filters and 4 blocks, batch 16,
    no validation) with its batches drawn from memory, and read from disk by a DataLoader (what runs whose rows
    exceed ``IN_MEMORY_BYTES`` do). Each is timed after a 5-step run, which also loads the rows into memory once."""
    from dataclasses import replace

    from precip_cvae.config import load_config
    from precip_cvae.data.dataset import PreparedData
    from precip_cvae.data.sample_store import SampleStore
    from precip_cvae.downstream import experiment as ex

    data = PreparedData(root)
    config = load_config(None, [f"data.data_root={root}"])
    options = replace(config.experiment, arms=("baseline",), steps=steps, filters=16, n_blocks=4, batch_size=16,
                      val_every=0)  # fmt: skip
    examples = ex.Examples(data, SampleStore(root / "no-samples"))
    plan = ex.plan_arms(data, options, examples)["baseline"]
    rates = {}
    for where, limit in (("memory", ex.IN_MEMORY_BYTES), ("disk", 0)):
        ex.train_run(plan, examples, data, replace(options, steps=5), 0, config, device, memory_bytes=limit)
        _sync(device)
        started = time.perf_counter()
        ex.train_run(plan, examples, data, options, 0, config, device, memory_bytes=limit)
        _sync(device)
        rates[where] = steps / (time.perf_counter() - started)
    return rates


def evaluate_rate(root: Path, device: str, K: int, workers: int = 0) -> dict:
    """`evaluate` on the test days (model, analogs, climatology, oracle) in days/s, and the rate of drawing the
    model's K samples per day alone. ``workers`` > 0: scored in that many processes while this one draws."""
    from precip_cvae.config import EvaluateConfig
    from precip_cvae.data.dataset import PreparedData
    from precip_cvae.evaluate import run_evaluate
    from precip_cvae.generator import Generator

    config = _fit_config(root, device)
    data = PreparedData(root / "data")
    days = data.ids("test")
    started = time.perf_counter()
    run_evaluate(config, EvaluateConfig(K=K, split="test", workers=workers), out_dir=root / f"evaluation{workers}",
                 progress=False)  # fmt: skip
    evaluate_seconds = time.perf_counter() - started
    generator = Generator.from_outputs(data, config.data.outputs_root, None, torch.device(device))
    rng = torch.Generator(device=torch.device(device)).manual_seed(0)
    started = time.perf_counter()
    for start in range(0, len(days), 16):
        generator.draw(days[start : start + 16], K, "prior", 1.0, rng)
    draw_seconds = time.perf_counter() - started
    return {"days": len(days), "seconds": evaluate_seconds, "days_per_s": len(days) / evaluate_seconds,
            "draw_days_per_s": len(days) / draw_seconds}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller matrices and batches, one timed repeat")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=Path("benchmark.json"), help="where the results go")
    parser.add_argument("--batch", default="6", help="train.batch_size of the projected epoch: a number or auto (6)")
    parser.add_argument("--compile", default="default",
                        help="train.compile mode measured against eager at batch 6 (default; none: skip)")  # fmt: skip
    parser.add_argument("--projection-compile", default="none",
                        help="also project with this train.compile mode (2nd epoch timed; none: skip)")  # fmt: skip
    parser.add_argument("--epoch-days", type=int, default=None,
                        help="days of the projected epoch's benchmark (240; 120 with --quick)")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the training alarms of a one-epoch model are expected here
    from precip_cvae.heap import keep_freed_memory

    keep_freed_memory()  # as every precip-cvae command does
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    repeats = 1 if args.quick else 3
    sizes = (2048, 3072) if args.quick else (2048, 3072, 4096)
    n = "×".join(map(str, sizes))
    rows: list[dict] = []

    def row(name: str, value: float, unit: str, reference: float | None, ratio_name: str, must_be_below_1: bool):
        ratio = value / reference if reference else None
        rows.append({"name": name, "value": value, "unit": unit, "reference": reference, "ratio": ratio,
                     "ratio_of": ratio_name})  # fmt: skip
        shown = f"{ratio:8.3f}" if ratio is not None else "       –"
        print(f"{name:58s} {value:12.4g} {unit:12s} {shown}  {ratio_name}", flush=True)
        if must_be_below_1 and ratio is not None and ratio > 1.0:
            sys.exit(f"{name}: ratio {ratio:.2f} > 1 is impossible here: a measuring error (check counts and timing)")

    print(f"device {device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(f"{'measurement':58s} {'value':>12s} {'unit':12s} {'ratio':>8s}  of")
    rates = {"fp32": matmul_rate(device, torch.float32, sizes)}
    row(f"matmul float32, best of n = {n}", rates["fp32"], "FLOP/s", None, "", False)
    amp = device.type == "cuda"
    if amp:
        torch.backends.cuda.matmul.allow_tf32 = True
        rates["tf32"] = matmul_rate(device, torch.float32, sizes + (8192,))
        rates["bf16"] = matmul_rate(device, torch.bfloat16, sizes + (8192,))
        row(f"matmul tf32, best of n = {n}×8192", rates["tf32"], "FLOP/s", None, "", False)
        row(f"matmul bf16, best of n = {n}×8192", rates["bf16"], "FLOP/s", None, "", False)
    reference_rate = rates["bf16"] if amp else rates["fp32"]
    which = "bf16 matmul" if amp else "float32 matmul"

    cases = {"reference geometry": (REFERENCE_GEOMETRY, [], 2 if args.quick else 6),
             "demo size": (DEMO_GEOMETRY, DEMO_MODEL, 4 if args.quick else 16)}  # fmt: skip
    consumption = None
    from precip_cvae.config import load_config

    for label, (geometry, overrides, batch) in cases.items():
        config = load_config(None, overrides)
        r = train_step_rate(config, geometry, batch, device, amp, repeats)
        row(f"train, {label}: GFLOP per sample (measured)", r["flops_per_sample"] / 1e9, "GFLOP", None, "", False)
        row(f"train, {label}: samples/s (batch {batch})", r["samples_per_s"], "samples/s", None, "", False)
        achieved = r["flops_per_sample"] * r["samples_per_s"]
        row(f"train, {label}: achieved FLOP/s", achieved, "FLOP/s", reference_rate, which, True)
        if label == "demo size":
            consumption = r["samples_per_s"]
        s = sample_rate(config, geometry, 2, 4 if args.quick else 16, device, amp, repeats)
        row(f"sample, {label}: prior samples/s", s["samples_per_s"], "samples/s", None, "", False)
        row(f"sample, {label}: achieved FLOP/s", s["flops_per_sample"] * s["samples_per_s"], "FLOP/s",
            reference_rate, which, True)  # fmt: skip

    if device.type == "cpu":  # the fine-scale layers over slices of the batch (the default) against the whole batch
        from precip_cvae import slices

        config, budget = load_config(None, []), slices.CACHE_BYTES
        rates = {}
        for name in ("whole", "slices", "whole again", "slices again"):  # alternated: the machine drifts
            slices.CACHE_BYTES = budget if name.startswith("slices") else 2**62
            try:
                t = train_step_rate(config, REFERENCE_GEOMETRY, 6, device, amp, repeats)["samples_per_s"]
                d = sample_rate(config, REFERENCE_GEOMETRY, 1, 16, device, amp, repeats)["samples_per_s"]
            finally:
                slices.CACHE_BYTES = budget
            rates[name] = (t, d)
        for k, what in enumerate(("train, reference geometry, batch 6", "sample K = 16, reference geometry, one day")):
            fast = max(rates["slices"][k], rates["slices again"][k])
            slow = max(rates["whole"][k], rates["whole again"][k])
            row(f"{what}, in slices of the batch (best of 2): samples/s", fast, "samples/s", slow,
                "the whole batch at once, best of 2 (> 1: the slices help)", False)  # fmt: skip

    if args.compile != "none":  # train.compile against eager at the reference's batch
        batch, best_of = 6, max(repeats, 3)  # a ratio of two single timings swung by 30 % on a shared 2-core machine
        eager = train_step_rate(load_config(None, []), REFERENCE_GEOMETRY, batch, device, amp, best_of)
        try:
            compiled = train_step_rate(load_config(None, [f"train.compile={args.compile}"]), REFERENCE_GEOMETRY,
                                       batch, device, amp, best_of)  # fmt: skip
        except Exception as error:  # a compile failure on some device must not lose the other rows
            print(f"train.compile={args.compile} failed: {type(error).__name__}: {error}", flush=True)
        else:
            label = f"train, reference geometry, batch {batch}, train.compile={args.compile}"
            row(f"{label} (compiled in {compiled['compile_seconds']:.0f} s): samples/s", compiled["samples_per_s"],
                "samples/s", eager["samples_per_s"], "the same step eagerly (> 1: compiling helps)", False)  # fmt: skip
            row(f"{label}: achieved FLOP/s", eager["flops_per_sample"] * compiled["samples_per_s"], "FLOP/s",
                reference_rate, which, True)  # fmt: skip
    if amp:  # bf16 autocast against fp32 (TF32 matmuls) at several batch sizes
        for batch in (6, 32, 128):
            fast = train_step_rate(load_config(None, []), REFERENCE_GEOMETRY, batch, device, True, repeats)
            slow = train_step_rate(load_config(None, []), REFERENCE_GEOMETRY, batch, device, False, repeats)
            row(f"train bf16, reference geometry, batch {batch}: samples/s", fast["samples_per_s"], "samples/s",
                slow["samples_per_s"], "fp32 (TF32) at the same batch (>= 1: bf16 no slower)", False)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("none", args.projection_compile) if args.projection_compile != "none" else ("none",):
            try:
                r = reference_epoch(Path(tmp), str(device), args.epoch_days or (120 if args.quick else 240),
                                    args.batch, mode)  # fmt: skip
            except Exception as error:  # a compile failure on some device must not lose the other rows
                print(f"projection with train.compile={mode} failed: {type(error).__name__}: {error}", flush=True)
                continue
            batch = f"{r['batch_size']} (auto)" if args.batch == "auto" else r["batch_size"]
            compiled = "" if mode == "none" else f", train.compile={mode}, its second epoch"
            row(f"projected: 80 epochs x 14,500 days, reference geometry, batch {batch} (from a real epoch of "
                f"{r['train_days']} days{compiled}, {r['seconds']:.0f} s)", r["projected_minutes"], "min", 10.0,
                "issue 12's target of 10 minutes (<= 1: met)", False)  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        days = 150 if args.quick else 600
        hr, lr = DEMO_GEOMETRY[2], DEMO_GEOMETRY[1]
        sets = {"base": (days, hr, lr), "twice the days": (2 * days, hr, lr),
                "half the grid": (days, (hr[0] // 2, hr[1] // 2), (lr[0] // 2 + 1, lr[1] // 2 + 1))}  # fmt: skip
        for name, (n_days, hr_shape, lr_shape) in sets.items():
            prepared_benchmark(tmp / name, n_days, lr_shape, hr_shape)
        r = loader_rates(tmp / "base" / "data", 16, 8 if args.quick else 30)
        row("loader, demo size: samples/s", r["loader_samples_per_s"], "samples/s", consumption,
            "the demo-size training step's consumption (> 1: no waiting)", False)  # fmt: skip
        row("loader, demo size: samples/s", r["loader_samples_per_s"], "samples/s", r["contiguous_samples_per_s"],
            "a contiguous memory-mapped read of the same bytes", True)  # fmt: skip
        epochs = {name: epoch_cost(tmp / name, str(device)) for name in sets}
        base = epochs["base"]
        row("epoch, demo size: seconds per pixel-day", base["per_pixel_day"] * 1e6, "µs", None, "", False)
        for name in ("twice the days", "half the grid"):
            row(f"epoch, {name}: seconds per pixel-day", epochs[name]["per_pixel_day"] * 1e6, "µs",
                base["per_pixel_day"] * 1e6, "the base dataset's (1: cost flat per pixel-day)", False)  # fmt: skip
        x = experiment_step_rates(tmp / "base" / "data", device, 20 if args.quick else 100)
        row("experiment, demo size: SRDRN steps/s, batches from memory", x["memory"], "steps/s", x["disk"],
            "the same batches read from disk by a DataLoader", False)  # fmt: skip
        # once untimed: the first call in a process pays imports and caches (figures, fonts) that a later one does
        # not, which made the per-further-day rate below come out faster than the draw alone (1.18 x) in one run
        evaluate_rate(tmp / "base", str(device), K=16)
        e = evaluate_rate(tmp / "base", str(device), K=16)
        share = "drawing its samples alone (= the share of its time spent drawing)"
        row(f"evaluate K = 16, demo size ({e['days']} test days): test days/s", e["days_per_s"], "days/s",
            e["draw_days_per_s"], share, True)  # fmt: skip
        # the fixed costs (figures, imports, setup) cancel in the difference of two test splits
        e2 = evaluate_rate(tmp / "twice the days", str(device), K=16)
        marginal = (e2["days"] - e["days"]) / (e2["seconds"] - e["seconds"])
        row(f"evaluate K = 16, demo size: days/s per further test day ({e['days']} -> {e2['days']} days)", marginal,
            "days/s", e2["draw_days_per_s"], share, False)  # fmt: skip
        workers = min(8, (os.cpu_count() or 1) - 2)
        if workers >= 2:  # scoring in processes beside the draw: only where cores are left over (on 2 it is slower)
            w = [evaluate_rate(tmp / name, str(device), K=16, workers=workers) for name in ("base", "twice the days")]
            parallel = (w[1]["days"] - w[0]["days"]) / (w[1]["seconds"] - w[0]["seconds"])
            row(f"evaluate, evaluate.workers={workers}: days/s per further test day", parallel, "days/s", marginal,
                "the same with scoring in this process (> 1: the workers help)", False)  # fmt: skip
    for days in (2000,) if args.quick else (2000, 15000):
        # in a small process of its own: a child forked from this one (torch, models) would inherit its peak RSS
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(__file__).parent / "prepare_memory.py"
            argv = [sys.executable, str(script), "--days", str(days), "--work", str(Path(tmp) / "prepare"), "--json"]
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            p = json.loads(out.strip().splitlines()[-1])
        row(f"prepare, {days} days at the reference geometry: seconds", p["seconds"], "s", p["copy_seconds"],
            "copying its input directory", False)  # fmt: skip
        row(f"prepare, {days} days: peak RSS", p["peak_rss"] / 2**20, "MiB", p["obs_bytes"] / 2**20,
            "the size of its obs arrays (a fixed ~300 MiB of libraries, then streamed)", False)  # fmt: skip
    machine = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}  # fmt: skip
    args.json.write_text(json.dumps({"machine": machine, "quick": args.quick, "rows": rows}, indent=1))
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
