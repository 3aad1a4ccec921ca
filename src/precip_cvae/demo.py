"""`precip-cvae demo`: every stage that exists, on a small synthetic benchmark, on a CPU."""

from __future__ import annotations

import time
from pathlib import Path


def run_demo(
    out: Path,
    days: int = 1200,
    hr_shape: tuple[int, int] = (96, 84),
    lr_shape: tuple[int, int] = (8, 7),
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Run synth → prepare under ``out`` and print where each stage wrote what.

    Returns the paths of the stages' outputs.
    """
    from precip_cvae.data.prepare import PrepareOptions, format_summary, prepare
    from precip_cvae.data.srdrn import read_srdrn_directory
    from precip_cvae.data.synthetic import SynthOptions, run_synth

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bench_dir = out / "benchmark"
    options = SynthOptions(days=days, hr_shape=hr_shape, lr_shape=lr_shape, seed=seed, oracle_members=8)
    print(f"[1/2] synth -> {bench_dir}")
    print(run_synth(options, bench_dir, fmt="srdrn", overwrite=True, progress=progress))
    print(f"[2/2] prepare -> {out / 'data'}")
    summary = prepare(read_srdrn_directory(bench_dir), out, PrepareOptions(progress=progress, overwrite=True))
    print(format_summary(summary, out / "data"), end="")
    print(f"demo finished in {time.perf_counter() - started:.0f} s; outputs under {out}")
    return {"benchmark": bench_dir, "data": out / "data"}
