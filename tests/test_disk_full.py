"""A disk that fills up while a stage writes (issue 13 point 3): a small tmpfs where the machine lets us mount one
(root with CAP_SYS_ADMIN; skipped elsewhere; tests/test_fileio.py injects the error instead). Each writing stage
first writes a good output there, then the disk is filled to a few kilobytes and the stage is run again: it must
exit 1 with one line saying the disk is full, leave the good output as it was, and leave no temporary file or lock.
A read-only output directory must be refused the same way."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.cases import TINY_MODEL


@pytest.fixture
def disk(tmp_path):
    """A 16 MiB tmpfs at ``tmp_path / "disk"``, unmounted afterwards."""
    root = tmp_path / "disk"
    root.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(root)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)


def _fill(disk: Path, leave: int) -> None:
    """Write a ballast file that leaves ``leave`` bytes free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "ballast", "wb") as fh:
        fh.truncate(0)
        block = b"\0" * (1 << 20)
        remaining = max(free - leave, 0)
        while remaining > 0:
            remaining -= fh.write(block[: min(len(block), remaining)])


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "ballast"}


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "precip_cvae", *argv, "--quiet"], capture_output=True, text=True)


def _stages(prepared: Path, trained, disk: Path) -> dict[str, tuple[list[str], list[str], Path]]:
    """stage -> (argv of the good run, argv of the run on a full disk, the output it replaces)."""
    outputs = Path(trained.data.outputs_root)
    ckpt = str(outputs / "checkpoints" / "cvae_best.pt")
    cfg = ["--config", str(outputs / "config.yaml")]
    bench = prepared.parent / "bench"
    sample = ["sample", *cfg, "--K", "2", "--days", "split:val", "--out", str(disk / "synth"), "--checkpoint", ckpt]
    evaluate = ["evaluate", *cfg, "--K", "2", "--split", "val", "--out", str(disk / "eval"), "--checkpoint", ckpt,
                "evaluate.maps=1"]  # fmt: skip
    augment = ["augment", *cfg, "--source", str(outputs / "synth"), "--out", str(disk / "aug")]
    train = ["train", f"data.data_root={prepared}", f"data.outputs_root={disk / 'run'}", *TINY_MODEL]
    synth = ["synth", "--out", str(disk / "bench"), "--days", "60", "--hr-shape", "24", "20", "--lr-shape", "4", "3",
             "--oracle-members", "2"]  # fmt: skip
    experiment = ["experiment", *cfg, "--source", str(outputs / "synth"), "--out", str(disk / "exp"), "--arms",
                  "baseline", "--steps", "4", "--filters", "4", "--blocks", "1", "--batch-size", "4"]  # fmt: skip
    return {
        "synth": (synth, [*synth, "--overwrite", "--format", "netcdf"], disk / "bench"),
        "experiment": ([*experiment, "--seeds", "1"], [*experiment, "--seeds", "3"], disk / "exp"),
        "prepare": (["prepare", "--input_dir", str(bench), "--output_dir", str(disk / "p")],
                    ["prepare", "--input_dir", str(bench), "--output_dir", str(disk / "p"), "--overwrite"],
                    disk / "p"),
        "train": ([*train, "train.epochs=1"], [*train, "train.epochs=3", "--resume"], disk / "run"),
        "sample": (sample, [*sample, "--seed", "7"], disk / "synth"),
        "augment": (augment, [*augment, "--overwrite", "--per-day", "2"], disk / "aug"),
        "evaluate": (evaluate, [*evaluate, "--seed", "7"], disk / "eval"),
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["synth", "prepare", "train", "sample", "augment", "evaluate", "experiment"])
def test_a_full_disk_fails_cleanly_and_keeps_the_good_output(stage, prepared, trained, disk):
    outputs = Path(trained.data.outputs_root)
    if stage in ("augment", "experiment") and not (outputs / "synth").is_dir():
        assert _cli("sample", "--config", str(outputs / "config.yaml"), "--K", "2").returncode == 0
    good, again, out = _stages(prepared, trained, disk)[stage]
    done = _cli(*good)
    assert done.returncode == 0, done.stderr
    # what must survive: the whole output; of a training run its checkpoints (its log may gain the row of an epoch
    # whose checkpoint could not be written: a resume drops rows past its checkpoint); of an experiment every file
    # (a run finished before the disk filled up is kept for the next attempt)
    kept = disk / "run" / "checkpoints" if stage == "train" else disk
    before = _files(kept)
    for leave in (0, 8 * 1024):  # a full disk at the first file, and after a few
        _fill(disk, leave)
        done = _cli(*again)
        err = [line for line in done.stderr.splitlines() if "WARNING" not in line and not line.startswith("done in")]
        assert done.returncode == 1, (done.stderr, sorted(str(p) for p in out.rglob("*")), os.statvfs(disk))
        assert len(err) == 1 and "disk is full" in err[0] and "Traceback" not in done.stderr, done.stderr[-3000:]
        after = _files(kept)
        assert (after.items() >= before.items()) if stage == "experiment" else (after == before)
        assert sorted(p.name for p in disk.iterdir()) == sorted([out.name, "ballast"]), list(disk.iterdir())
        (disk / "ballast").unlink()
    done = _cli(*again)  # with room again, the same command finishes
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["prepare", "sample", "evaluate"])
def test_a_read_only_filesystem_is_refused_and_left_alone(stage, prepared, trained, disk):
    good, again, out = _stages(prepared, trained, disk)[stage]
    assert _cli(*good).returncode == 0
    before = _files(disk)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    done = _cli(*again)
    err = [line for line in done.stderr.splitlines() if "WARNING" not in line]
    assert done.returncode == 1 and len(err) == 1 and "Read-only file system" in err[0], done.stderr
    assert f"cannot write {disk}" in err[0] and "Traceback" not in done.stderr
    assert _files(disk) == before


def test_a_read_only_output_directory_is_refused_and_left_alone(trained, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes through read-only permissions")
    outputs = Path(trained.data.outputs_root)
    parent = tmp_path / "ro"
    parent.mkdir()
    (parent / "keep.txt").write_text(uuid.uuid4().hex)
    parent.chmod(0o555)
    try:
        done = _cli("sample", "--config", str(outputs / "config.yaml"), "--K", "2", "--out", str(parent / "synth"))
    finally:
        parent.chmod(0o755)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(err) == 1 and f"cannot write {parent}" in err[0], err
    assert "Permission denied" in err[0]
    assert sorted(p.name for p in parent.iterdir()) == ["keep.txt"]
