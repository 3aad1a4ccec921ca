"""The command line: --help of every command, `python -m`, and the demo end to end on tiny data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from precip_cvae.cli import build_parser, main

COMMANDS = ["synth", "prepare", "train", "sample", "augment", "evaluate", "experiment", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: precip-cvae " + command in capsys.readouterr().out


def test_top_level_help_lists_the_commands():
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text


def test_reference_and_dashed_spellings_are_the_same_option():
    parser = build_parser()
    a = parser.parse_args(["prepare", "--input_dir", "x", "--output_dir", "y"])
    b = parser.parse_args(["prepare", "--input-dir", "x", "--output-dir", "y"])
    assert (a.input_dir, a.output_dir) == (b.input_dir, b.output_dir)


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "precip_cvae", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "synth" in result.stdout


@pytest.mark.slow
def test_demo_end_to_end_in_a_subprocess(tmp_path):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--days", "120", "--hr-shape", "24", "20", "--lr-shape", "4", "3",
            "--epochs", "2"]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "precip_cvae", *argv], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for stage in ("prepared dataset", "last log row", "accepted", "SRDRN arrays with", "heavy days:"):
        assert stage in result.stdout, stage
    assert (out / "outputs" / "cvae" / "checkpoints" / "cvae_best.pt").is_file()
    assert (out / "augmented" / "obs_train_augmented.npy").is_file()
    assert len(list((out / "data" / "Y_hr").glob("day_*.npy"))) == 120
    assert np.load(out / "data" / "X_lr" / "day_000000.npy").shape == (6, 4, 3)
    split = json.loads((out / "data" / "metadata" / "split.json").read_text())
    assert len(split["test"]) == 24 and len(split["train"]) + len(split["val"]) == 96
    # re-running the demo is safe and replaces its own outputs; --quiet leaves the result table alone on stdout
    again = subprocess.run([sys.executable, "-m", "precip_cvae", *argv, "--quiet"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("all 24 test days:") and "last log row" not in again.stdout


def test_synth_refuses_bad_options_in_one_line(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "s"), "--days", "5", "--test-fraction", "1.5", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test_fraction" in err[0]
    assert not (tmp_path / "s").exists()


def test_a_failed_run_exits_1_and_bad_input_2(monkeypatch, tmp_path, capsys):
    import precip_cvae.train
    from precip_cvae.train import TrainingDiverged

    def diverge(*args, **kwargs):
        raise TrainingDiverged("training diverged: 21 non-finite losses in a row; lower train.lr")

    monkeypatch.setattr(precip_cvae.train, "fit", diverge)
    assert main(["train", f"data.data_root={tmp_path}", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["precip-cvae train: error: training diverged: 21 non-finite losses in a row; lower train.lr"]
    assert main(["train", "train.epochs=0", "--quiet"]) == 2
    assert "train.epochs" in capsys.readouterr().err


def test_quiet_and_verbose_set_the_package_loggers_level(capsys):
    import logging

    from precip_cvae.cli import configure_logging

    log = logging.getLogger("precip_cvae.some_stage")
    try:
        configure_logging(quiet=True)
        log.info("hidden")
        log.warning("shown")
        out, err = capsys.readouterr()
        assert out == "" and err == "precip-cvae: WARNING: shown\n"
        configure_logging(verbose=True)
        log.debug("details")
        assert capsys.readouterr().out == "details\n"
        configure_logging()
        log.debug("details")
        log.info("progress")
        assert capsys.readouterr().out == "progress\n"
    finally:
        configure_logging()


def test_overrides_may_stand_between_options_and_keep_their_order():
    from precip_cvae.cli import EXPERIMENT_FLAGS, _load_config, parse

    argv = ["experiment", "--config", "reference", "experiment.lr=0.002", "--arms", "baseline", "experiment.steps=9",
            "--seeds", "3", "experiment.lr=0.003"]  # fmt: skip
    args = parse(build_parser(), argv)
    assert args.overrides == ["experiment.lr=0.002", "experiment.steps=9", "experiment.lr=0.003"]
    config = _load_config(args, EXPERIMENT_FLAGS)
    assert (config.experiment.lr, config.experiment.steps, config.experiment.seeds) == (0.003, 9, 3)
    assert config.experiment.arms == ("baseline",)
    bad_lines = (
        ["experiment", "experiment.lr=0.002", "--arms", "baseline", "--bogus"],
        ["experiment", "experiment.lr=1", "--arms", "baseline", "stray"],
        ["synth", "--out", "x", "a=b"],
    )
    for bad in bad_lines:
        with pytest.raises(SystemExit) as stop:
            parse(build_parser(), bad)
        assert stop.value.code == 2


def test_experiment_device_and_seeds_flags_are_config_overrides():
    from precip_cvae.cli import EXPERIMENT_FLAGS, _load_config

    args = build_parser().parse_args(["experiment", "--device", "cpu", "--seeds", "7", "--blocks", "2",
                                      "experiment.steps=9"])  # fmt: skip
    config = _load_config(args, EXPERIMENT_FLAGS)
    assert (config.train.device, config.experiment.seeds, config.experiment.steps) == ("cpu", 7, 9)
    assert config.experiment.n_blocks == 2
    defaults = _load_config(build_parser().parse_args(["experiment"]), EXPERIMENT_FLAGS)
    assert defaults.train.device == "auto" and defaults.experiment.seeds == 5
