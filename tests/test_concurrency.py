"""Two real processes writing the same output (issue 13 point 4): the second one, started while the first holds the
lock (the first is paused with SIGSTOP once its lock exists, so the two meet whatever the machine's speed), stops
with status 1 and one line naming the first; the first finishes, and its output is what one run alone writes
(nothing interleaved)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cases import TINY_MODEL
from tests.test_kill import contents


def _popen(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "precip_cvae", *argv, "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _written(lock: Path) -> bool:
    try:
        return lock.stat().st_size > 0  # the owner's pid is in it
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sample", "train"])
def test_a_second_writer_started_while_the_first_writes_is_refused(stage, prepared, trained, tmp_path):
    outputs = Path(trained.data.outputs_root)
    out = tmp_path / "out"
    if stage == "sample":
        argv = ["sample", "--config", str(outputs / "config.yaml"), "--K", "4", "--days", "split:train", "--out",
                str(out)]  # fmt: skip
    else:
        argv = ["train", f"data.data_root={prepared}", f"data.outputs_root={out}", *TINY_MODEL, "train.epochs=3"]
    lock = out.with_name(".out.lock")
    first = _popen(*argv)
    while not _written(lock) and first.poll() is None:
        time.sleep(0.001)
    first.send_signal(signal.SIGSTOP)  # holds the lock, alive, for as long as the second needs to reach it
    try:
        second = _popen(*argv)
        _, err = second.communicate()
    finally:
        first.send_signal(signal.SIGCONT)
    _, first_err = first.communicate()
    assert first.returncode == 0, first_err
    lines = [line for line in err.splitlines() if "WARNING" not in line]
    assert second.returncode == 1 and len(lines) == 1, err
    assert f"{out}: another run is writing here (pid {first.pid}" in lines[0]
    assert not lock.exists()
    alone = tmp_path / "alone"
    alone.mkdir()
    moved = [a.replace(str(out), str(alone / "out")) for a in argv]
    done = subprocess.run([sys.executable, "-m", "precip_cvae", *moved, "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert contents(out, tmp_path) == contents(alone / "out", alone)
