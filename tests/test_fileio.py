"""One writer per output: a second run refuses while the first is alive, a killed run's lock is taken over."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from precip_cvae.errors import RunFailed
from precip_cvae.fileio import UNWRITTEN_LOCK_S, create_npy, full_disk_as_enospc, output_lock, staged_directory
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


def test_what_a_killed_writer_left_is_cleaned_up_and_its_old_output_put_back(tmp_path):
    # killed between moving the previous output aside and renaming the new one into place: the next writer puts the
    # previous output back before it starts, and removes the killed run's staging directory
    out = tmp_path / "synth"
    (tmp_path / ".synth.old").mkdir()
    (tmp_path / ".synth.old" / "manifest.json").write_text("{}")
    (tmp_path / ".synth.x1y2.partial").mkdir()
    (tmp_path / ".synth.x1y2.partial" / "half.npy").write_bytes(b"\x93NUMPY")
    (tmp_path / ".other.x.partial").mkdir()  # another output's: not touched
    with pytest.raises(ValueError):
        with staged_directory(out, overwrite=True):
            raise ValueError("this run fails too")
    assert (out / "manifest.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.x.partial", "synth"]
    (tmp_path / ".synth.old").mkdir()  # both present: the rename had finished, the old copy is dropped
    with staged_directory(out, overwrite=True) as root:
        (root / "manifest.json").write_text("[]")
    assert (out / "manifest.json").read_text() == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.x.partial", "synth"]


def test_an_empty_lock_is_taken_over_only_once_it_is_old(tmp_path):
    # a run killed between creating its lock and writing its pid leaves an empty file: refused while it could be a
    # live run about to write, taken over after UNWRITTEN_LOCK_S
    out = tmp_path / "synth"
    lock = out.with_name(".synth.lock")
    lock.touch()
    with pytest.raises(RunFailed, match=r"another run is starting to write here \(.*\.synth\.lock is still empty\)"):
        with output_lock(out):
            pass
    old = lock.stat().st_mtime - UNWRITTEN_LOCK_S - 1
    os.utime(lock, (old, old))
    with output_lock(out):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


_KILLED_WHILE_LOCKING = """
import json, os, signal, sys
from precip_cvae.fileio import output_lock
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
setattr({module}, {name!r}, die)
with output_lock(sys.argv[1]):
    pass
"""


@pytest.mark.parametrize("module,name", [("json", "dump"), ("os", "link")])
def test_a_run_killed_while_taking_its_lock_leaves_no_lock_and_its_draft_is_removed(tmp_path, module, name, live_pid):
    # SIGKILL while the lock's content is written, and between writing it and linking it into place: the lock never
    # exists half-made, so the next run goes on at once (an empty lock made it wait UNWRITTEN_LOCK_S, or refuse)
    out = tmp_path / "data"
    code = _KILLED_WHILE_LOCKING.format(module=module, name=name)
    killed = subprocess.Popen([sys.executable, "-c", code, str(out)], stderr=subprocess.PIPE, text=True)
    assert killed.wait() == -9, killed.stderr.read()
    host = socket.gethostname()
    assert [p.name for p in tmp_path.iterdir()] == [f".data.lock.{host}.{killed.pid}.tmp"]  # its draft, no lock
    others = [tmp_path / f".data.lock.{host}.{live_pid}.tmp", tmp_path / ".data.lock.another-host.1.tmp"]
    for other in others:  # a live run's draft, and one of another host: not touched
        other.write_text("{}")
    with output_lock(out) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert sorted(tmp_path.iterdir()) == sorted(others)


def test_without_hard_links_the_lock_is_created_exclusively(tmp_path, monkeypatch, live_pid):
    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "synth"
    with output_lock(out) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert list(tmp_path.iterdir()) == []
    _lock_of(out, live_pid)
    with pytest.raises(RunFailed, match=f"pid {live_pid}"):
        with output_lock(out):
            pass


def test_a_lock_that_cannot_be_written_is_not_left_behind(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json, "dump", full)
    with pytest.raises(OSError, match="No space"):
        with output_lock(tmp_path / "synth"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_on_a_full_disk_becomes_enospc(tmp_path, monkeypatch):
    # torch.save and netCDF4 report a full disk as RuntimeError with no errno: it is turned into ENOSPC when the
    # filesystem is full, and left as it is otherwise
    class Stat:
        f_frsize = 4096
        f_bavail = 3

    with pytest.raises(RuntimeError, match="iostream"):
        with full_disk_as_enospc(tmp_path):
            raise RuntimeError("basic_ios::clear: iostream error")
    monkeypatch.setattr(os, "statvfs", lambda path: Stat())
    with pytest.raises(OSError) as caught:
        with full_disk_as_enospc(tmp_path):
            raise RuntimeError("basic_ios::clear: iostream error")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path)
    with pytest.raises(KeyError):  # not what a writer raises: a bug is not reported as a full disk
        with full_disk_as_enospc(tmp_path):
            raise KeyError("x")


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate on this system")
def test_a_memory_mapped_array_gets_its_blocks_before_it_is_written(tmp_path, monkeypatch):
    # a write through a memory map into a sparse file on a full disk is a SIGBUS; create_npy allocates first
    path = tmp_path / "a.npy"
    array = create_npy(path, (3, 4))
    array[:] = 1.5
    del array
    assert np.load(path).tolist() == [[1.5] * 4] * 3
    assert os.stat(path).st_blocks * 512 >= os.stat(path).st_size

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError) as caught:
        create_npy(tmp_path / "b.npy", (3, 4))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "b.npy")


def test_a_second_training_run_into_the_same_outputs_refuses(prepared, tmp_path, live_pid):
    out = tmp_path / "run"
    _lock_of(out, live_pid)
    argv = [sys.executable, "-m", "precip_cvae", "train", f"data.data_root={prepared}", f"data.outputs_root={out}",
            *TINY_MODEL, "train.epochs=1"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 1
    assert f"another run is writing here (pid {live_pid}" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_a_full_disk_stops_a_stage_cleanly_and_keeps_the_previous_output(trained, tmp_path, monkeypatch, capsys):
    # the disk fills up while `sample` writes its third file: exit 1 with what to do, the previous complete output
    # untouched, no partial directory and no lock left behind
    import errno

    import numpy as np

    from precip_cvae.cli import main

    out = tmp_path / "synth"
    config = str(Path(trained.data.outputs_root) / "config.yaml")
    argv = [
        "sample",
        "--config",
        config,
        "--K",
        "2",
        "--days",
        "split:val",
        "--out",
        str(out),
        "--keep-rejected",
        "--quiet",
    ]
    assert main(argv) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_save, calls = np.save, []

    def save(file, *args, **kwargs):
        calls.append(file)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_save(file, *args, **kwargs)

    monkeypatch.setattr(np, "save", save)
    assert main([*argv, "--seed", "5"]) == 1
    assert len(calls) == 3 and len(before) > 4
    err = capsys.readouterr().err
    assert "error: the disk is full while writing" in err and "free space" in err and "Traceback" not in err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]


def _record_flushes(monkeypatch):
    """Record what is flushed to the disk: ("fsync", path, exists-as-named) and ("syncfs", path)."""
    from precip_cvae import fileio

    calls = []
    real = fileio._fsync
    monkeypatch.setattr(fileio, "_fsync", lambda p: (calls.append(("fsync", Path(p).name, Path(p).exists())), real(p)))
    return calls


def test_a_written_file_is_on_the_disk_before_its_rename_and_the_rename_after(tmp_path, monkeypatch):
    from precip_cvae.fileio import write_text

    calls = _record_flushes(monkeypatch)
    write_text(tmp_path / "report.md", "done\n")
    # the temporary file first (the final name does not exist yet), then the directory that holds the rename
    assert [c[0] for c in calls] == ["fsync", "fsync"]
    assert calls[0][1].startswith(".report.md.") and calls[0][1].endswith(".tmp")
    assert calls[1][1] == tmp_path.name and (tmp_path / "report.md").read_text() == "done\n"


def test_a_staged_directory_is_flushed_as_a_whole_before_it_is_published(tmp_path, monkeypatch):
    from precip_cvae import fileio

    calls = _record_flushes(monkeypatch)
    out = tmp_path / "evaluation"
    with staged_directory(out) as root:
        (root / "figures").mkdir()
        fileio.write_text(root / "figures" / "a.txt", "a")
        fileio.save_npy(root / "b.npy", np.arange(3))
        assert calls == []  # files inside a staging directory are not flushed one by one
    assert (out / "figures" / "a.txt").read_text() == "a"
    # each file, then each directory deepest first, all under their staging names; then the parent of the rename
    names = [c[1] for c in calls]
    assert sorted(names[:2]) == ["a.txt", "b.npy"] and names[2] == "figures"
    assert names[3].startswith(".evaluation.") and names[3].endswith(".partial")
    assert names[4:] == [tmp_path.name] and not any(c[2] is False for c in calls)
    fileio.write_text(tmp_path / "after.txt", "x")  # outside any staging directory: flushed on its own again
    assert calls[-2][1].startswith(".after.txt.")
