"""How fast the downstream experiment's SRDRN trains, and what layout, cuDNN autotuning, bf16 and runs at once buy.

    python benchmarks/srdrn_speed.py [--device cuda] [--steps 40] [--processes 1 4 8] [--json srdrn_speed.json]

At the geometries of the README's experiments: the synthetic benchmark (6 × 13 × 11 → 156 × 132, 2 static maps) and
the Fraser basin (1 × 3 × 7 → 14 × 31, 1 static map); SRDRN with 16 filters and 4 blocks, batch 64, Adam through
:func:`precip_cvae.loop.train_step` (the experiment's step: a host sync for the NaN guard, gradient clipping off) and
the moving average of the weights after each step, as `experiment` trains. Random inputs: the speed does not depend
on the values.

Rows, each a ratio measured in the same run on the same machine:

- each variant's steps/s ÷ float32, NCHW, no autotuning: ``experiment.channels_last`` (its default on a CPU),
  ``experiment.cudnn_benchmark`` and ``train.amp`` (bf16 autocast), alone and together (the last two on a GPU only);
  on a CPU, the fine grid's layers computed on the whole batch at once rather than over slices of it that fit the
  caches (:mod:`precip_cvae.slices`; below 1: the slices help);
- on a CPU, SRDRN's last layer (a convolution to one channel) as one convolution ÷ as per-channel convolutions summed
  (:func:`precip_cvae.convs.single_output_conv`, the default on a CPU; channels-last both; below 1: per channel helps);
- on a CPU, one process with glibc's default heap ÷ one that keeps its freed maps (:mod:`precip_cvae.heap`, what
  every precip-cvae process does; below 1: keeping them helps);
- the steps/s of N processes at once, summed, each training its own SRDRN in NCHW (as
  ``experiment --jobs N`` does) ÷ one process alone: above 1, running N at once helps; about 1, the device is already
  full; below 1, they slow each other down (a GPU switches between processes rather than running them side by side).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import torch

from precip_cvae.heap import keep_freed_memory

#: name -> (input channels, lr_shape, hr_shape, static maps)
GEOMETRIES = {
    "synthetic benchmark (6x13x11 -> 156x132)": (6, (13, 11), (156, 132), 2),
    "Fraser basin (1x3x7 -> 14x31)": (1, (3, 7), (14, 31), 1),
}
BATCH = 64


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trainer(geometry: tuple, device: torch.device, channels_last: bool, amp: bool):
    """A fresh SRDRN of ``geometry`` with its optimizer, weight average and one random batch; returns ``step()``."""
    from precip_cvae.downstream.srdrn import SRDRN
    from precip_cvae.loop import Precision, WeightAverage, train_step

    channels, lr_shape, hr_shape, n_statics = geometry
    torch.manual_seed(0)
    model = SRDRN(channels, lr_shape, hr_shape, n_statics, 16, 4, 1).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    average = WeightAverage(model, 0.995, True)
    precision = Precision.for_device(device, amp)
    batch = {
        "inputs": torch.randn(BATCH, channels, *lr_shape, device=device),
        "statics": torch.randn(1, n_statics, *hr_shape, device=device),
        "target": torch.randn(BATCH, 1, *hr_shape, device=device),
    }

    def loss_fn(pred: torch.Tensor, b: dict) -> dict:
        return {"total": (pred.float() - b["target"]).abs().mean()}

    def step() -> None:
        train_step(model, batch, optimizer, loss_fn, forward=lambda m, b, g: m(b["inputs"], b["statics"]),
                   scaler=precision.scaler, autocast_dtype=precision.dtype)  # fmt: skip
        average.update(model)

    return step


def _seconds(step, device: torch.device, steps: int, ready=None) -> float:
    """Seconds for ``steps`` training steps after 5 untimed ones (which also let cuDNN time its algorithms when asked
    to); with ``ready`` (a barrier), the timing starts once every process sharing it has warmed up."""
    for _ in range(5):
        step()
    _sync(device)
    if ready is not None:
        ready.wait()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - started


def steps_per_s(geometry: tuple, device: torch.device, steps: int, channels_last=False, amp=False) -> float:
    """Training steps/s of one SRDRN in this process."""
    return steps / _seconds(_trainer(geometry, device, channels_last, amp), device, steps)


def _worker(geometry, device: str, steps: int, threads: int, ready, results, keep: bool) -> None:
    if keep:  # as every precip-cvae process does
        keep_freed_memory()
    torch.set_num_threads(threads)
    device = torch.device(device)
    results.put(_seconds(_trainer(geometry, device, False, False), device, steps, ready))


def concurrent_steps_per_s(geometry: tuple, device: torch.device, steps: int, processes: int, keep=True) -> float:
    """Summed training steps/s of ``processes`` processes that train at once (each with its share of the cores),
    over the time the slowest took; with ``keep=False`` they keep glibc's default heap (see precip_cvae.heap)."""
    context = multiprocessing.get_context("spawn")
    ready, results = context.Barrier(processes), context.Queue()
    threads = max(1, (os.cpu_count() or 1) // processes)
    workers = [context.Process(target=_worker, args=(geometry, str(device), steps, threads, ready, results, keep))
               for _ in range(processes)]  # fmt: skip
    for w in workers:
        w.start()
    seconds = [results.get(timeout=3600) for _ in workers]
    for w in workers:
        w.join()
        if w.exitcode != 0:
            sys.exit(f"a benchmark process failed (exit code {w.exitcode})")
    return processes * steps / max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--processes", type=int, nargs="+", default=None,
                        help="processes at once to compare with one (default: 4 8 on a GPU, 2 on a CPU)")  # fmt: skip
    parser.add_argument("--geometries", default="all", help="'all', 'synthetic' or 'fraser'")
    parser.add_argument("--json", type=Path, default=Path("srdrn_speed.json"), help="where the results go")
    args = parser.parse_args()
    keep_freed_memory()  # as every precip-cvae process does
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    processes = args.processes or ([4, 8] if gpu else [2])
    rows: list[dict] = []

    def row(name: str, value: float, reference: float | None, ratio_of: str) -> None:
        ratio = value / reference if reference else None
        rows.append({"name": name, "steps_per_s": value, "reference": reference, "ratio": ratio, "ratio_of": ratio_of})
        shown = f"{ratio:7.2f}" if ratio is not None else "      –"
        print(f"{name:72s} {value:9.2f} {shown}  {ratio_of}", flush=True)

    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if gpu else "")
          + f", {os.cpu_count()} cores, torch {torch.__version__}, batch {BATCH}")  # fmt: skip
    print(f"{'measurement':72s} {'steps/s':>9s} {'ratio':>7s}  of")
    for label, geometry in GEOMETRIES.items():
        if args.geometries != "all" and not label.lower().startswith(args.geometries.lower()):
            continue
        torch.backends.cudnn.benchmark = False
        base = steps_per_s(geometry, device, args.steps)
        row(f"{label}: float32, NCHW", base, None, "")
        variants = [("channels_last (experiment's default on a CPU)", dict(channels_last=True), False)]
        if gpu:
            variants += [
                ("cudnn_benchmark", {}, True),
                ("channels_last + cudnn_benchmark", dict(channels_last=True), True),
                ("bf16 autocast (train.amp)", dict(amp=True), False),
                ("bf16 + channels_last + cudnn_benchmark", dict(channels_last=True, amp=True), True),
            ]
        measured = {}
        for name, kwargs, autotune in variants:
            torch.backends.cudnn.benchmark = autotune
            measured[name] = steps_per_s(geometry, device, args.steps, **kwargs)
            row(f"{label}: {name}", measured[name], base, "NCHW")
        if not gpu:  # the default computes the fine grid over slices of the batch on a CPU (precip_cvae.slices)
            from precip_cvae import slices

            budget, slices.CACHE_BYTES = slices.CACHE_BYTES, 2**62
            try:
                whole = steps_per_s(geometry, device, args.steps)
            finally:
                slices.CACHE_BYTES = budget
            row(f"{label}: NCHW, the whole batch at once (no slices)", whole, base, "NCHW in slices")
            from precip_cvae import convs  # the last layer, to one channel, per channel on a CPU (the default)

            convs.PER_CHANNEL_ON_CPU = False
            try:
                one_conv = steps_per_s(geometry, device, args.steps, channels_last=True)
            finally:
                convs.PER_CHANNEL_ON_CPU = True
            per_channel = measured["channels_last (experiment's default on a CPU)"]
            row(f"{label}: channels_last, the last layer as one convolution", one_conv, per_channel,
                "per channel (< 1: per channel helps)")  # fmt: skip
        torch.backends.cudnn.benchmark = False
        one = concurrent_steps_per_s(geometry, device, args.steps, 1)
        row(f"{label}: 1 process (spawned, all cores)", one, None, "")
        if not gpu:
            default = concurrent_steps_per_s(geometry, device, args.steps, 1, keep=False)
            row(f"{label}: 1 process, glibc's default heap", default, one, "freed maps kept (< 1: keeping helps)")
        for n in processes:
            row(f"{label}: {n} processes at once, summed", concurrent_steps_per_s(geometry, device, args.steps, n), one,
                "1 process")  # fmt: skip
    machine = {"device": str(device), "cores": os.cpu_count(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(device) if gpu else None}  # fmt: skip
    args.json.write_text(json.dumps({"machine": machine, "batch": BATCH, "steps": args.steps, "rows": rows}, indent=1))
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
