"""The same seed on a CPU gives byte-identical outputs (issue 13 point 6): the samples (tests/test_sample.py), the
metrics of `evaluate` and the arrays of `augment`, written twice into different directories."""

from __future__ import annotations

import json
from pathlib import Path

from precip_cvae.cli import main


def _metrics(path: Path) -> dict:
    metrics = json.loads(path.read_text())
    for key in ("out_dir", "seconds"):  # where it was written and how long it took
        metrics.pop(key, None)
    return metrics


def test_evaluate_and_augment_twice_give_the_same_bytes(trained, tmp_path):
    outputs = Path(trained.data.outputs_root)
    cfg = ["--config", str(outputs / "config.yaml"), "--quiet"]
    for run in ("a", "b"):
        assert main(["evaluate", *cfg, "--K", "3", "--split", "val", "--seed", "3", "--out", str(tmp_path / f"e{run}"),
                     "evaluate.maps=0"]) == 0  # fmt: skip
        assert main(["sample", *cfg, "--K", "2", "--days", "split:train", "--out", str(tmp_path / f"s{run}")]) == 0
        assert main(["augment", *cfg, "--source", str(tmp_path / f"s{run}"), "--out", str(tmp_path / f"a{run}"),
                     "--synthetic-weight", "0.5"]) == 0  # fmt: skip
    a, b = _metrics(tmp_path / "ea" / "metrics.json"), _metrics(tmp_path / "eb" / "metrics.json")
    assert a == b and a["systems"]
    names = sorted(p.name for p in (tmp_path / "aa").iterdir())
    assert "predictors_train_augmented.npy" in names and names == sorted(p.name for p in (tmp_path / "ab").iterdir())
    for name in names:
        if name != "augment.json":  # names its source directory
            assert (tmp_path / "aa" / name).read_bytes() == (tmp_path / "ab" / name).read_bytes(), name
    assert (tmp_path / "sa" / "samples.nc").read_bytes() == (tmp_path / "sb" / "samples.nc").read_bytes()
