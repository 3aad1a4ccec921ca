"""A corpus of bad inputs on the command line: each one exits 2 with one line naming the key, option or file, no
traceback, and writes nothing (issue 13 point 1; the bad data files are in test_bad_data.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from precip_cvae.cli import main
from precip_cvae.errors import InputError

CASES = {
    # the config: typos, wrong types, values out of range (every stage shares the loader; train is the cheapest)
    "section typo": (["train", "trian.epochs=3"], "trian"),
    "key typo": (["train", "train.epoch=3"], "train.epoch"),
    "wrong type": (["train", "train.lr=fast"], "train.lr"),
    "negative lr": (["train", "train.lr=-0.001"], "train.lr"),
    "zero epochs": (["train", "train.epochs=0"], "train.epochs"),
    "zero batch": (["train", "train.batch_size=0"], "train.batch_size"),
    "zero latent": (["train", "model.d_z=0"], "model.d_z"),
    "zero width cap": (["train", "model.decoder_width_cap=0"], "model.decoder_width_cap"),
    "zero block width cap": (["train", "model.decoder_block_width_cap=0"], "model.decoder_block_width_cap"),
    "unknown output head": (["train", "model.output=softplus"], "model.output"),
    "unknown prior": (["train", "model.prior=flat"], "model.prior"),
    "unknown threshold": (["train", "loss.extreme_threshold=P97"], "extreme_threshold"),
    "not a device": (["train", "train.device=abacus"], "train.device"),
    "no override syntax": (["train", "epochs"], "epochs"),
    "missing config file": (["train", "--config", "{tmp}/none.yaml"], "none.yaml"),
    # sample
    "K = 0": (["sample", "--K", "0"], "--K"),
    "negative temperature": (["sample", "--temperature", "-1"], "temperature"),
    "unknown mode": (["sample", "sampling.mode=mixed"], "sampling.mode"),
    "unknown day list": (["sample", "--days", "wettest"], "--days"),
    "missing day file": (["sample", "--days", "file:{tmp}/days.txt"], "days.txt"),
    # evaluate
    "K = 1 for an ensemble": (["evaluate", "--K", "1"], "K"),
    "negative workers": (["evaluate", "evaluate.workers=-1"], "evaluate.workers"),
    "unknown baseline": (["evaluate", "--baselines", "persistence"], "persistence"),
    # experiment
    "unknown arm": (["experiment", "--arms", "magic"], "magic"),
    "zero seeds": (["experiment", "experiment.seeds=0"], "experiment.seeds"),
    # prepare and synth
    "missing input directory": (["prepare", "--input_dir", "{tmp}/nowhere", "--output_dir", "{tmp}/out"], "nowhere"),
    "no days": (["synth", "--out", "{tmp}/bench", "--days", "0"], "--days"),
    "test share above 1": (["synth", "--out", "{tmp}/bench", "--test-fraction", "1.5"], "test_fraction"),
    "a date that is not one": (["synth", "--out", "{tmp}/bench", "--start-date", "2020-13-45"], "2020-13-45"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_input_exits_2_with_one_line_and_writes_nothing(name, trained, tmp_path, capsys):
    # a real prepared dataset and trained generator, so that each case fails on its own fault; outputs go to tmp_path
    argv, needle = CASES[name]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    stage = argv[0]
    if stage not in ("prepare", "synth") and "--config" not in argv:
        outputs = tmp_path / "run" if stage == "train" else trained.data.outputs_root
        argv = [stage, f"data.data_root={trained.data.data_root}", f"data.outputs_root={outputs}", *argv[1:]]
    if stage in ("sample", "evaluate", "experiment"):
        argv += ["--out", str(tmp_path / "out")]
    before = sorted(Path(tmp_path).rglob("*"))
    outputs_before = sorted(Path(trained.data.outputs_root).rglob("*"))
    try:
        status = main(argv)
    except SystemExit as stop:  # argparse's own checks
        status = stop.code
    assert status == 2, name
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert sorted(Path(tmp_path).rglob("*")) == before
    assert sorted(Path(trained.data.outputs_root).rglob("*")) == outputs_before


def test_traceback_shows_the_whole_trace_of_a_bad_input(tmp_path):
    with pytest.raises(InputError, match="nowhere"):
        main(["--traceback", "prepare", "--input_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")])
