"""One writer per output: a second run refuses while the first is alive, a killed run's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from precip_cvae.errors import RunFailed
from precip_cvae.fileio import output_lock, staged_directory
from tests.cases import TINY_MODEL


def _lock_of(path, pid, host=None):
    lock = path.with_name(f".{path.name}.lock")
    lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "then",
                                "command": "precip-cvae sample"}))  # fmt: skip
    return lock


@pytest.fixture
def live_pid():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def test_a_live_owner_makes_a_second_writer_refuse_and_write_nothing(tmp_path, live_pid):
    out = tmp_path / "synth"
    lock = _lock_of(out, live_pid)
    with pytest.raises(RunFailed, match=rf"synth: another run is writing here \(pid {live_pid} on .*delete .*lock"):
        with staged_directory(out, overwrite=True) as root:
            (root / "a.txt").write_text("never")
    assert not out.exists() and lock.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [lock.name]
    _lock_of(out, 1, host="another-host")  # another host's owner cannot be checked from here: refused too
    with pytest.raises(RunFailed, match="another-host"):
        with output_lock(out):
            pass


def test_a_dead_owners_lock_is_taken_over_and_every_lock_is_released(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)  # that process has exited
    out = tmp_path / "evaluation"
    lock = _lock_of(out, dead)
    with staged_directory(out, overwrite=True) as root:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with output_lock(out):  # re-entrant: a stage may write into the output its caller locked
            pass
        assert lock.is_file()
        (root / "a.txt").write_text("done")
    assert (out / "a.txt").read_text() == "done" and not lock.exists()
    with pytest.raises(ValueError):
        with output_lock(out):
            raise ValueError("a failed run")
    assert not lock.exists()


def test_a_second_training_run_into_the_same_outputs_refuses(prepared, tmp_path, live_pid):
    out = tmp_path / "run"
    _lock_of(out, live_pid)
    argv = [sys.executable, "-m", "precip_cvae", "train", f"data.data_root={prepared}", f"data.outputs_root={out}",
            *TINY_MODEL, "train.epochs=1"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 1
    assert f"another run is writing here (pid {live_pid}" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
