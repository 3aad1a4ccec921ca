"""The `precip-cvae` console script: options become objects here, and errors become one clear line."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from pathlib import Path

from precip_cvae import __version__
from precip_cvae.config import ARMS, PRESERVE_MASS
from precip_cvae.errors import InputError, RunFailed
from precip_cvae.heap import keep_freed_memory


def _option(parser: argparse.ArgumentParser, name: str, *aliases: str, **kwargs) -> None:
    """Register ``--name`` under the reference's spelling (underscores) and the dashed one."""
    flags = [name]
    stem = name[2:]
    for spelling in ("--" + stem.replace("-", "_"), "--" + stem.replace("_", "-"), *aliases):
        if spelling not in flags:
            flags.append(spelling)
    parser.add_argument(*flags, **kwargs)


def _verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", "-q", action="store_true", help="no progress bars; only warnings and errors")
    group.add_argument("--verbose", "-v", action="store_true", help="also debug messages")


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Messages of the package's loggers: information to stdout, warnings and errors to stderr.

    ``quiet``: warnings and errors only; ``verbose``: debug messages too. Called once by :func:`main`; a library
    user routes or silences the ``precip_cvae`` logger as with any other.
    """
    root = logging.getLogger("precip_cvae")
    for handler in list(root.handlers):
        if getattr(handler, "_precip_cvae", False):
            root.removeHandler(handler)
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter("precip-cvae: %(levelname)s: %(message)s"))
    for handler in (out, err):
        handler._precip_cvae = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def _load_config(args: argparse.Namespace, flags: dict[str, str] | None = None):
    """The config of a command: defaults <- --config <- key=value overrides <- the command's own flags.

    ``flags`` maps option names (as in ``args``) to config keys; an option left out (None) keeps the config's value,
    so every default lives in the config schema and every value is validated there before work starts.
    """
    from precip_cvae.config import load_config

    overrides = list(getattr(args, "overrides", None) or [])
    for name, key in (flags or {}).items():
        value = getattr(args, name)
        if value is not None:
            overrides.append(f"{key}={_yaml_scalar(value)}")
    return load_config(args.config, overrides)


def _yaml_scalar(value) -> str:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        import json

        return json.dumps(value)  # a quoted YAML string: "1e-3", "true" or "a,b" stay strings
    return str(value)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="write the built-in synthetic benchmark (SRDRN arrays or NetCDF) with its oracle ensemble",
        description="Write the synthetic benchmark: terrain, coastline, autocorrelated weather, predictors derived "
        "from the large-scale state plus independent noise, high-resolution precipitation with a known random "
        "small-scale part, and K redraws of it for every test day (the oracle ensemble, a CRPS floor).",
    )
    _option(p, "--out", "--output_dir", required=True, type=Path, help="directory to create")
    _option(p, "--days", type=_positive_int, default=3000, help="number of days (default 3000)")
    _option(p, "--test-fraction", type=float, default=0.2, help="last share of days used as test period (0.2)")
    _option(p, "--format", choices=["srdrn", "netcdf"], default="srdrn", help="SRDRN .npy arrays or CF NetCDF")
    _option(p, "--seed", type=int, default=0)
    _option(p, "--hr-shape", type=_positive_int, nargs=2, default=(156, 132), metavar=("H", "W"))
    _option(p, "--lr-shape", type=_positive_int, nargs=2, default=(13, 11), metavar=("h", "w"))
    _option(p, "--channels", type=_positive_int, default=6, help="number of predictor channels C (6)")
    _option(p, "--oracle-members", type=_positive_int, default=16, help="oracle redraws per test day K (16)")
    _option(p, "--start-date", default="1981-01-01", help="date of the first day")
    _option(p, "--overwrite", action="store_true", help="replace an existing output directory")
    _verbosity(p)
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from precip_cvae.data.synthetic import SynthOptions, run_synth

    options = SynthOptions(
        days=args.days,
        test_fraction=args.test_fraction,
        hr_shape=tuple(args.hr_shape),
        lr_shape=tuple(args.lr_shape),
        channels=args.channels,
        oracle_members=args.oracle_members,
        seed=args.seed,
        start_date=args.start_date,
    )
    print(run_synth(options, args.out, fmt=args.format, overwrite=args.overwrite, progress=not args.quiet))
    return 0


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="SRDRN arrays or NetCDF/Zarr -> the prepared per-day dataset",
        description="Build <output_dir>/data: per-day X_lr and Y_hr files, statics, splits, categories, thresholds "
        "in mm/day and the normalization. Either --input_dir (an SRDRN directory) or --lowres/--highres "
        "(NetCDF/Zarr) with --train-period and --test-period.",
    )
    _option(p, "--input_dir", type=Path, help="SRDRN directory (predictors_*_mean_std_separate.npy, obs_*.npy, ...)")
    _option(p, "--lowres", nargs="+", type=Path, help="NetCDF/Zarr files of predictors; each variable is a channel")
    _option(p, "--highres", type=Path, help="NetCDF/Zarr file of high-resolution precipitation (NaN = missing)")
    _option(p, "--statics", nargs="+", type=Path, help="land mask / valid mask / elevation on the high-res grid")
    _option(p, "--train-period", help="YYYY-MM-DD:YYYY-MM-DD (NetCDF input)")
    _option(p, "--test-period", help="YYYY-MM-DD:YYYY-MM-DD (NetCDF input)")
    _option(p, "--pr-var", help="name of the precipitation variable in --highres if it has several")
    _option(p, "--pr-units", help="units of --highres precipitation when its attribute is missing or wrong")
    _option(p, "--coarsen", type=_positive_int, default=1, help="block-average predictors over NxN cells first")
    _option(p, "--output_dir", required=True, type=Path, help="the dataset is written to <output_dir>/data")
    _option(p, "--val-fraction", type=float, default=0.2, help="share of the training period for validation (0.2)")
    _option(p, "--split", choices=["time", "random"], default="time", help="validation = last days (time) or random")
    _option(p, "--seed", type=int, default=0, help="seed of a random split")
    _option(p, "--heavy-quantile", type=float, default=0.95, help="heavy day: land mean >= this quantile (0.95)")
    _option(p, "--dry-mm-per-day", type=float, default=1.0, help="dry day: land mean below this (1.0 mm/day)")
    _option(p, "--spacing-km", type=float, default=4.0, help="cell size when the grid has no coordinates (4 km)")
    _option(p, "--chunk-days", type=_positive_int, default=64, help="days read at once (64)")
    _option(p, "--overwrite", action="store_true", help="replace an existing <output_dir>/data")
    _verbosity(p)
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from precip_cvae.data.prepare import PrepareOptions, format_summary, prepare

    netcdf = args.lowres or args.highres
    if args.input_dir and netcdf:
        raise InputError("--input_dir and --lowres/--highres: give one kind of input, not both")
    if args.input_dir:
        from precip_cvae.data.srdrn import read_srdrn_directory

        source = read_srdrn_directory(args.input_dir)
    elif netcdf:
        from precip_cvae.data.netcdf import read_netcdf

        for flag, value in (("--lowres", args.lowres), ("--highres", args.highres)):
            if not value:
                raise InputError(f"{flag}: required with NetCDF input")
        for flag, value in (("--train-period", args.train_period), ("--test-period", args.test_period)):
            if not value:
                raise InputError(f"{flag}: required with NetCDF input (YYYY-MM-DD:YYYY-MM-DD)")
        source = read_netcdf(
            args.lowres,
            args.highres,
            args.train_period,
            args.test_period,
            statics=args.statics,
            pr_var=args.pr_var,
            pr_units=args.pr_units,
            coarsen=args.coarsen,
        )
    else:
        raise InputError("give --input_dir (SRDRN arrays) or --lowres and --highres (NetCDF/Zarr)")
    options = PrepareOptions(
        val_fraction=args.val_fraction,
        split=args.split,
        seed=args.seed,
        heavy_quantile=args.heavy_quantile,
        dry_mm_per_day=args.dry_mm_per_day,
        chunk_days=args.chunk_days,
        spacing_km=args.spacing_km,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    summary = prepare(source, args.output_dir, options)
    print(format_summary(summary, args.output_dir / "data"), end="")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="every stage on a small synthetic benchmark, end to end, on a CPU",
        description="Run the pipeline on a small synthetic benchmark: synth, prepare, train. Re-running replaces "
        "the demo's own output directory.",
    )
    _option(p, "--out", type=Path, default=Path("precip-cvae-demo"), help="working directory (precip-cvae-demo)")
    _option(p, "--days", type=_positive_int, default=1200, help="days of the benchmark (1200)")
    _option(p, "--hr-shape", type=_positive_int, nargs=2, default=(96, 84), metavar=("H", "W"))
    _option(p, "--lr-shape", type=_positive_int, nargs=2, default=(8, 7), metavar=("h", "w"))
    _option(p, "--seed", type=int, default=0)
    _option(p, "--epochs", type=_positive_int, help="training epochs (default: the demo config's)")
    _option(p, "--with-experiment", action="store_true", help="also run a small downstream experiment (slow)")
    _verbosity(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from precip_cvae.demo import run_demo

    result = run_demo(
        args.out,
        days=args.days,
        hr_shape=tuple(args.hr_shape),
        lr_shape=tuple(args.lr_shape),
        seed=args.seed,
        epochs=args.epochs,
        with_experiment=args.with_experiment,
        progress=not args.quiet,
    )
    print(result["headline"])
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train the cVAE on a prepared dataset (checkpoints, log, resume)",
        description="Train the conditional VAE. Settings come from the defaults, then --config, then key=value "
        "overrides (e.g. train.epochs=5 model.d_z=16). Writes <outputs_root>/checkpoints/cvae_{best,last,"
        "epoch_XXX}.pt, <outputs_root>/logs/train_log.csv and the resolved config.yaml.",
    )
    _option(p, "--config", type=Path, help="YAML config (the reference's config.yaml keys)")
    _option(p, "--resume", action="store_true", help="continue from <outputs_root>/checkpoints/cvae_last.pt")
    _option(p, "--overwrite", action="store_true", help="start again even if a run exists in outputs_root")
    _option(p, "--print-config", action="store_true", help="print the commented default config and exit")
    _verbosity(p)
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    if args.print_config:
        from importlib.resources import files

        print(files("precip_cvae").joinpath("default_config.yaml").read_text(), end="")
        return 0
    from precip_cvae.config import load_config
    from precip_cvae.train import fit

    config = load_config(args.config, args.overrides)
    result = fit(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if result["rank"] == 0:
        print(f"checkpoints: {result['checkpoints']}  log: {result['log']}  best epoch: {result['best_epoch']}")
    return 0


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="draw synthetic days from a trained cVAE, gate them in mm/day, export them",
        description="Draw K samples per selected day (posterior: close to the real day; prior: from X_lr alone), "
        "check each against the real day and the observed climatology in mm/day, and write the accepted ones "
        "to <outputs_root>/synth as day_XXXXXX_sample_YY.{Y_hr_syn,X_lr_ref}.npy, plus samples.nc (all samples, "
        "mm/day) and manifest.json (every verdict and the numbers behind it). Defaults come from the "
        "config's sampling section.",
    )
    _option(p, "--config", type=Path, help="YAML config (as for train)")
    _option(p, "--checkpoint", type=Path, help="default: <outputs_root>/checkpoints/cvae_best.pt")
    _option(p, "--mode", choices=["posterior", "prior"])
    _option(p, "--K", type=_positive_int, help="samples per day")
    _option(p, "--days", help="heavy_only (heavy train days), split:train|val|test, or file:PATH (ids per line)")
    _option(p, "--temperature", type=float, help="scale of the latent std (1.0)")
    _option(p, "--min_threshold", type=float, help="reject below this land total / real day's land total (0.1)")
    _option(p, "--seed", type=int)
    _option(p, "--batch-size", type=_positive_int, help="days per forward pass")
    _option(p, "--keep-rejected", action="store_true", help="write rejected samples to synth/rejected/")
    _option(
        p, "--preserve-mass", choices=PRESERVE_MASS,
        help="rescale each sample to its real day's land total (domain) or coarse-cell totals (cells); none",
    )  # fmt: skip
    _option(p, "--out", type=Path, help="output directory (default <outputs_root>/synth)")
    _verbosity(p)
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    p.set_defaults(func=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    from precip_cvae.sample import SampleOptions, format_summary, run_sample

    names = ("mode", "K", "days", "temperature", "min_threshold", "seed", "batch_size", "preserve_mass")
    config = _load_config(args, {name: f"sampling.{name}" for name in names})
    s = config.sampling
    options = SampleOptions(
        mode=s.mode, K=s.K, days=s.days, temperature=s.temperature, seed=s.seed, batch_size=s.batch_size,
        keep_rejected=args.keep_rejected, preserve_mass=s.preserve_mass,
    )  # fmt: skip
    out = args.out or Path(config.data.outputs_root) / "synth"
    summary = run_sample(config, options, checkpoint=args.checkpoint, out_dir=out, progress=not args.quiet)
    if summary:  # empty on a rank of a torchrun other than 0, which writes and reports
        print(format_summary(summary, out))
    return 0


def _add_augment(sub) -> None:
    p = sub.add_parser(
        "augment",
        help="merge accepted synthetic samples with the real training days into SRDRN arrays",
        description="Write predictors_train_augmented.npy (N, h, w, C) and obs_train_augmented.npy (N, H, W) in "
        "SRDRN's normalized format: the real days of the train split, then up to --per-day accepted synthetic "
        "samples per day; augmented_rows.csv tags every row (real/synthetic, day id, sample).",
    )
    _option(p, "--config", type=Path, help="YAML config (for data_root and outputs_root)")
    _option(p, "--out", "--output_dir", type=Path, required=True, help="directory to create")
    _option(p, "--per-day", type=int, default=1, help="accepted synthetic samples used per real day (1)")
    _option(p, "--source", type=Path, help="samples directory (default <outputs_root>/synth)")
    _option(
        p, "--synthetic-weight", type=float, help="also write sample_weights.npy: 1 for real rows, this for synthetic"
    )
    _option(p, "--overwrite", action="store_true", help="replace an existing output directory")
    _verbosity(p)
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    p.set_defaults(func=_run_augment)


def _run_augment(args: argparse.Namespace) -> int:
    from precip_cvae.augment import run_augment
    from precip_cvae.config import load_config

    config = load_config(args.config, args.overrides)
    source = args.source or Path(config.data.outputs_root) / "synth"
    summary = run_augment(
        config.data.data_root, source, args.out, per_day=args.per_day, synthetic_weight=args.synthetic_weight,
        overwrite=args.overwrite, progress=not args.quiet,
    )  # fmt: skip
    print(
        f"augmented SRDRN arrays -> {args.out}: {summary['rows']} rows ({summary['real']} real, "
        f"{summary['synthetic']} synthetic from {summary['synthetic_days']} days)"
    )
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="probabilistic and extreme-value verification of the generator against reference ensembles",
        description="Draw K samples for every day of a split from X_lr alone and score them in mm/day (CRPS, "
        "pooled and threshold-weighted CRPS, rank histogram, spread-skill, spectra, FSS, quantile bias, CSI, SEDI, "
        "Rx1day) on all days and on heavy days, next to an analog ensemble, a climatological ensemble and, on the "
        "synthetic benchmark, the oracle ensemble. Writes metrics.json, figures and report.md.",
    )
    _option(p, "--config", type=Path, help="YAML config (as for train)")
    _option(p, "--checkpoint", type=Path, help="default: <outputs_root>/checkpoints/cvae_best.pt")
    _option(p, "--split", choices=["test", "val", "train"], help="days to score (evaluate.split: test)")
    _option(p, "--K", type=_positive_int, help="members per day for every ensemble (evaluate.K: 16)")
    _option(p, "--mode", choices=["prior", "posterior"], help="prior: from X_lr alone (evaluate.mode: prior)")
    _option(p, "--temperature", type=float, help="(evaluate.temperature: 1.0)")
    _option(p, "--seed", type=int, help="(evaluate.seed: 0)")
    _option(p, "--baselines", help="comma-separated subset of analog,climatology,oracle (evaluate.baselines)")
    _option(p, "--oracle", type=Path, help="oracle_test.npy (default: the one `prepare` recorded for a benchmark)")
    _option(p, "--out", type=Path, help="output directory (default <outputs_root>/evaluation)")
    _verbosity(p)
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from precip_cvae.evaluate import run_evaluate
    from precip_cvae.report import headline

    flags = ("split", "K", "mode", "temperature", "seed", "baselines", "oracle")
    config = _load_config(args, {name: f"evaluate.{name}" for name in flags})
    metrics = run_evaluate(config, checkpoint=args.checkpoint, out_dir=args.out, progress=not args.quiet)
    if not metrics:  # a rank of a torchrun other than 0: rank 0 writes and reports
        return 0
    print(headline(metrics))
    print(f"report: {Path(metrics['out_dir']) / 'report.md'}")
    return 0


def _add_experiment(sub) -> None:
    p = sub.add_parser(
        "experiment",
        help="the downstream proof: SRDRN trained with and without augmentation, on the same split and budget",
        description=f"Train the SRDRN port in arms ({', '.join(ARMS)}) with the same split, number of gradient "
        "steps and seeds; score the test days in mm/day; write experiment.json, experiment.md (the verdict first) "
        "and figures. Finished runs are kept in <out>/runs and skipped when the command is run again.",
    )
    _option(p, "--config", type=Path, help="YAML config (for data_root and outputs_root)")
    _option(p, "--arms", help=f"comma-separated arms (experiment.arms: all of {','.join(ARMS)})")
    _option(p, "--seeds", type=_positive_int, help="seeds per arm (experiment.seeds: 5)")
    _option(p, "--epochs", type=_positive_int, help="budget in passes over the real training days (experiment.epochs)")
    _option(p, "--steps", type=_positive_int, help="budget in gradient steps if no --epochs (experiment.steps: 2000)")
    _option(p, "--batch-size", type=_positive_int, help="(experiment.batch_size: 16)")
    _option(p, "--filters", type=_positive_int, help="SRDRN width (experiment.filters: 32; the paper's is 64)")
    _option(p, "--blocks", type=_positive_int, help="SRDRN residual blocks (experiment.n_blocks: 8; the paper's: 16)")
    _option(p, "--per-day", type=_positive_int, help="synthetic samples per heavy training day (experiment.per_day: 2)")
    _option(p, "--source", type=Path, help="samples directory (default <outputs_root>/synth)")
    _option(p, "--out", type=Path, help="output directory (default <outputs_root>/experiment)")
    _option(p, "--device", help="auto, cpu, cuda, cuda:1, mps (train.device)")
    _option(p, "--jobs", type=_positive_int, help="runs trained at once, in separate processes (experiment.jobs: 1)")
    _verbosity(p)
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    p.set_defaults(func=_run_experiment)


#: `experiment`'s options -> the config keys they set.
EXPERIMENT_FLAGS = {
    **{name: f"experiment.{name}" for name in ("arms", "seeds", "epochs", "steps", "batch_size", "filters", "per_day",
                                               "source", "jobs")},
    "blocks": "experiment.n_blocks",
    "device": "train.device",
}  # fmt: skip


def _run_experiment(args: argparse.Namespace) -> int:
    from precip_cvae.downstream.experiment import run_experiment

    config = _load_config(args, EXPERIMENT_FLAGS)
    report = run_experiment(config, out_dir=args.out, progress=not args.quiet)
    out = args.out or Path(config.data.outputs_root) / "experiment"
    print(report["verdict"])
    print(f"report: {out / 'experiment.md'}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported as every other bad input is: one line, exit status 2 (``--help`` shows
    the usage)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="precip-cvae",
        description="Learn p(high-res daily precipitation | coarse inputs) with a conditional VAE, generate "
        "synthetic heavy-precipitation days, and measure whether they help a downscaling network.",
    )
    parser.add_argument("--version", action="version", version=f"precip-cvae {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_synth(sub)
    _add_prepare(sub)
    _add_train(sub)
    _add_sample(sub)
    _add_augment(sub)
    _add_evaluate(sub)
    _add_experiment(sub)
    _add_demo(sub)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that ``section.key=value`` overrides may stand anywhere among the options
    (``experiment --config c.yaml data.data_root=d --arms baseline experiment.lr=0.003``): argparse alone takes
    only the first run of positionals and rejects the rest."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        if "precip_cvae.distributed" in sys.modules:  # a command that may have joined a process group
            sys.modules["precip_cvae.distributed"].leave()


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    show_traceback = args.traceback or bool(os.environ.get("PRECIP_CVAE_TRACEBACK"))
    configure_logging(quiet=args.quiet, verbose=args.verbose)
    keep_freed_memory()  # a step's maps are reused, not page-faulted in anew (precip_cvae.heap)
    started = time.perf_counter()
    try:
        status = args.func(args)
    except InputError as err:
        if show_traceback:
            raise
        one_line = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"precip-cvae {args.command}: error: {one_line}", file=sys.stderr)
        return 2
    except RunFailed as err:
        if show_traceback:
            raise
        print(f"precip-cvae {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"precip-cvae {args.command}: interrupted", file=sys.stderr)
        return 130
    except (OSError, MemoryError) as err:
        if show_traceback:
            raise
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            where = f" while writing {err.filename}" if err.filename else ""
            print(f"precip-cvae {args.command}: error: the disk is full{where}; nothing was replaced (outputs are "
                  "written under a temporary name first): free space, or write elsewhere", file=sys.stderr)  # fmt: skip
            return 1
        if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            print(f"precip-cvae {args.command}: error: cannot write {err.filename}: {err.strerror}; write elsewhere "
                  "(--out, --output_dir or data.outputs_root) or change the permissions", file=sys.stderr)  # fmt: skip
            return 1
        print(f"precip-cvae {args.command}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError and the like, raised outside training
        if show_traceback or "out of memory" not in str(err).lower():
            raise
        print(
            f"precip-cvae {args.command}: error: out of memory on the device ({str(err).splitlines()[0]}); lower "
            "the batch size (train.batch_size, --batch-size) or run on a device with more memory",
            file=sys.stderr,
        )
        return 1
    if args.command != "demo":
        print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return status
