"""`precip-cvae demo`: every stage that exists, on a small synthetic benchmark, on a CPU."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from precip_cvae.fileio import write_text

logger = logging.getLogger(__name__)

#: The demo's model and training settings: small enough for 2 CPU cores in a few minutes.
DEMO_OVERRIDES = {
    # the default generator (spatial latents, censored output, ensemble CRPS term) at a laptop size; 2 prior draws
    # per day for the ensemble term instead of 4 (each draw is a decoder pass: 4 would triple the demo's time)
    "model": {"d_z": 16, "base_filters": 16, "d_x": 64, "d_y": 64},
    "loss": {"crps_members": 2},
    "train": {
        "epochs": 8,
        "batch_size": 16,
        "lr": 0.002,
        "warmup_epochs": 3,
        "save_every": 4,
        "device": "cpu",
        "amp": False,
    },
}


def demo_config_text(out: Path) -> str:
    """The demo's config.yaml: the defaults with :data:`DEMO_OVERRIDES` and paths under ``out``."""
    import yaml

    sections = {
        "data": {"data_root": str(out.resolve() / "data"), "outputs_root": str(out.resolve() / "outputs" / "cvae")},
        **DEMO_OVERRIDES,
    }
    return "# precip-cvae demo config: small model, few epochs, CPU\n" + yaml.safe_dump(sections, sort_keys=False)


def run_demo(
    out: Path,
    days: int = 1200,
    hr_shape: tuple[int, int] = (96, 84),
    lr_shape: tuple[int, int] = (8, 7),
    seed: int = 0,
    epochs: int | None = None,
    with_experiment: bool = False,
    progress: bool = True,
) -> dict:
    """Run synth → prepare → train → sample → augment → evaluate under ``out``, logging where each stage wrote
    what.

    Returns the paths of the stages' outputs and, as ``headline``, the evaluation's headline table.
    """
    from precip_cvae.augment import run_augment
    from precip_cvae.config import load_config
    from precip_cvae.data.prepare import PrepareOptions, format_summary, prepare
    from precip_cvae.data.srdrn import read_srdrn_directory
    from precip_cvae.data.synthetic import SynthOptions, run_synth
    from precip_cvae.evaluate import EvaluateOptions, run_evaluate
    from precip_cvae.quality import GateConfig
    from precip_cvae.report import headline
    from precip_cvae.sample import SampleOptions, run_sample
    from precip_cvae.sample import format_summary as sample_summary
    from precip_cvae.train import fit

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bench_dir = out / "benchmark"
    options = SynthOptions(days=days, hr_shape=hr_shape, lr_shape=lr_shape, seed=seed, oracle_members=8)
    logger.info(f"[1/6] synth -> {bench_dir}")
    logger.info(run_synth(options, bench_dir, fmt="srdrn", overwrite=True, progress=progress))
    logger.info(f"[2/6] prepare -> {out / 'data'}")
    summary = prepare(read_srdrn_directory(bench_dir), out, PrepareOptions(progress=progress, overwrite=True))
    logger.info(format_summary(summary, out / "data").rstrip("\n"))
    config_path = out / "demo_config.yaml"
    write_text(config_path, demo_config_text(out))
    overrides = [f"train.epochs={epochs}"] if epochs else []
    config = load_config(config_path, overrides)
    logger.info(f"[3/6] train -> {config.data.outputs_root} (config {config_path})")
    result = fit(config, overwrite=True, progress=progress)
    last = result["last_row"]
    logger.info(
        "last log row: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items())
    )
    synth_dir = Path(config.data.outputs_root) / "synth"
    logger.info(f"[4/6] sample heavy training days (posterior, K=2) -> {synth_dir}")
    options = SampleOptions(mode="posterior", K=2, days="heavy_only", seed=seed)
    summary = run_sample(config, options, GateConfig(), out_dir=synth_dir, progress=progress)
    logger.info(sample_summary(summary, synth_dir))
    augmented = out / "augmented"
    logger.info(f"[5/6] augment -> {augmented}")
    rows = run_augment(config.data.data_root, synth_dir, augmented, per_day=1, overwrite=True, progress=progress)
    logger.info(f"SRDRN arrays with {rows['real']} real and {rows['synthetic']} synthetic rows in {augmented}")
    logger.info(
        f"[6/6] evaluate the test days (prior samples, K=16) -> {Path(config.data.outputs_root) / 'evaluation'}"
    )
    metrics = run_evaluate(config, EvaluateOptions(split="test", K=16, seed=seed), progress=progress)
    table = headline(metrics)
    logger.info(f"report: {Path(metrics['out_dir']) / 'report.md'}")
    if with_experiment:
        from precip_cvae.downstream.experiment import ExperimentOptions, run_experiment

        logger.info(
            f"[+] downstream experiment (2 seeds, 300 steps per run) -> {Path(config.data.outputs_root) / 'experiment'}"
        )
        report = run_experiment(
            config,
            ExperimentOptions(seeds=2, steps=300, filters=16, n_blocks=4, ema=0.98, val_every=50),
            progress=progress,
        )
        logger.info(report["verdict"])
    logger.info(f"demo finished in {time.perf_counter() - started:.0f} s; outputs under {out}")
    return {
        "benchmark": bench_dir,
        "data": out / "data",
        "config": config_path,
        "synth": synth_dir,
        "report": Path(metrics["out_dir"]) / "report.md",
        "headline": table,
        **result,
    }
