"""Atomic writes: a killed command leaves the old complete state or the new one, never a partial file; and one
writer per output: a second run that would write the same output refuses (:func:`output_lock`)."""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import numpy as np

from precip_cvae.errors import InputError, RunFailed

logger = logging.getLogger(__name__)

#: Locks this process holds, by lock file, with how many times each was taken (a stage inside another may write
#: into the output its caller locked).
_HELD: dict[Path, int] = {}


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a directory: its entries, e.g. a rename into it) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:  # a filesystem that cannot sync a directory (some network mounts) says EINVAL
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


#: Staging directories this process is building: their files are flushed together before they are published, so
#: a file written inside one is not flushed on its own (a prepare of 15,000 days writes 30,000 of them).
_STAGING: set[Path] = set()


def _inside_staging(path: Path) -> bool:
    return bool(_STAGING) and any(parent in _STAGING for parent in path.absolute().parents)


def _flush_tree(root: Path) -> None:
    """Flush every file under ``root`` to the disk, then its directories (their entries), deepest first.

    Only this tree's files (a ``syncfs`` of the whole filesystem would also wait for every other writer's data),
    from a few threads at once, so that the filesystem can commit them together."""
    files, directories = [], [root]
    for parent, dirs, names in os.walk(root):
        files += [Path(parent) / name for name in names]
        directories += [Path(parent) / d for d in dirs]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(_fsync, files))
    for directory in reversed(directories):
        _fsync(directory)


@contextlib.contextmanager
def written_as(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of ``path`` (``.<name>.*.tmp``) for the block to write; renamed to ``path`` when the block
    ends without an error, removed otherwise. Every single-file writer of the package goes through it.

    Durable: the file is flushed to the disk before the rename and the directory after it, so after a power loss
    ``path`` is the old file or the complete new one (a rename alone orders nothing on the disk)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        durable = not _inside_staging(path)  # else the staging directory is flushed as a whole
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save ``array`` to ``path`` (.npy, no pickle) through a temporary file and a rename."""
    with written_as(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(array), allow_pickle=False)


def create_npy(path: str | os.PathLike, shape: tuple[int, ...], dtype=np.float32) -> np.memmap:
    """A new .npy file of ``shape`` as a writable memory map, with its blocks allocated first.

    A memory map writes into a sparse file; on a full disk the kernel can only signal the failed page with SIGBUS,
    which kills the process without a word. Allocating the blocks up front turns that into ENOSPC here.
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                del array
                raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
        finally:
            os.close(fd)
    return array


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON (NaN and infinities become null) through a temporary file."""
    write_text(path, json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    return obj


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` through a temporary file and a rename."""
    with written_as(path) as tmp:
        tmp.write_text(text)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, raising :class:`InputError` that names the file when it is missing or corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def _recover(final: Path) -> None:
    """Clean up after a run killed while writing ``final`` (called holding its lock, so no live run owns these):
    staging directories are removed, and an output moved aside for its replacement is put back if the kill came
    between the two renames."""
    for partial in final.parent.glob(f".{final.name}.*.partial"):
        logger.info(f"{partial}: left by a killed run; removed")
        shutil.rmtree(partial, ignore_errors=True)
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            logger.warning(f"{final}: its replacement was interrupted; the previous output is back")
            os.replace(old, final)


def remove_temporaries(*directories: str | os.PathLike) -> None:
    """Remove the temporary files (``.<name>.*.tmp``) a killed run left in ``directories``: call it holding the
    lock of the output they belong to."""
    for directory in map(Path, directories):
        for tmp in directory.glob(".*.tmp") if directory.is_dir() else []:
            if tmp.is_file():
                tmp.unlink(missing_ok=True)


#: A filesystem with less free space than this after a failed write is taken to be full.
FULL_DISK_BYTES = 1 << 20


@contextlib.contextmanager
def full_disk_as_enospc(where: str | os.PathLike) -> Iterator[None]:
    """Turn a write that failed because the disk holding ``where`` filled up into ``OSError(ENOSPC)``.

    NumPy and Python report a full disk as ENOSPC, but torch.save (C++ streams) and netCDF4 (HDF5) raise a
    RuntimeError without an errno; the command line reports ENOSPC as a full disk and exits 1.
    """
    try:
        yield
    except (RuntimeError, OSError) as err:  # what the C and C++ writers raise; other errors are not the disk's
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise
        try:
            stat = os.statvfs(where)
        except OSError:
            raise err from None
        if stat.f_bavail * stat.f_frsize >= FULL_DISK_BYTES:
            raise
        raise OSError(errno.ENOSPC, f"No space left on device ({type(err).__name__})", str(where)) from err


@contextlib.contextmanager
def staged_directory(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it to ``final`` only on success.

    Yields the temporary directory (a sibling of ``final``). On any exception it is removed and
    ``final`` is untouched. With ``overwrite`` an existing ``final`` is replaced only after the new
    content is complete. Holds ``final``'s :func:`output_lock` throughout. Durable: the tree is flushed to the
    disk before the rename and ``final``'s parent after it (files written inside by :func:`written_as` are not
    flushed one by one).
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise InputError(f"{final}: already exists (pass --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(final):
        _recover(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)).absolute()
        _STAGING.add(tmp)
        try:
            with full_disk_as_enospc(tmp):
                yield tmp
                _flush_tree(tmp)  # the content is on the disk before the rename that publishes it
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            _STAGING.discard(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            _fsync(final.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
            _fsync(final.parent)


def content_sha256(*paths: str | os.PathLike, exclude: Collection[str] = ()) -> str:
    """SHA-256 of the files' bytes, in the order given (a file's alone is what ``sha256sum`` prints); a directory
    stands for its files, sorted by name, each preceded by its name, but those named in ``exclude``: what a manifest
    records of the checkpoint and the dataset it was made from."""
    import hashlib

    digest = hashlib.sha256()
    for path in map(Path, paths):
        named = path.is_dir()
        for file in sorted(p for p in path.iterdir() if p.is_file() and p.name not in exclude) if named else [path]:
            if named:
                digest.update(file.name.encode() + b"\0")
            with open(file, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


#: A lock file still empty after this many seconds was left by a run killed between creating and writing it (on a
#: filesystem without hard links, where :func:`_create_lock` cannot make it appear whole).
UNWRITTEN_LOCK_S = 10.0


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _remove_stale_drafts(lock: Path, host: str) -> None:
    """Remove the drafts of ``lock`` (see :func:`_create_lock`) left by killed runs on ``host``."""
    for draft in lock.parent.glob(f"{glob_escape(lock.name)}.*.tmp"):
        owner, _, pid = draft.name[len(lock.name) + 1 : -len(".tmp")].rpartition(".")
        if owner == host and pid.isdigit() and not _alive(int(pid)):
            draft.unlink(missing_ok=True)


def _create_lock(lock: Path, me: dict[str, Any]) -> bool:
    """Create ``lock`` holding ``me``, or return False where it exists. The lock appears whole: it is written as a
    draft of its own name first and then hard-linked to the lock's name, which fails where the lock exists (a run
    killed in between leaves a draft, never an empty lock). On a filesystem without hard links: created exclusively
    and then written, so that a kill in between leaves it empty (:data:`UNWRITTEN_LOCK_S`)."""
    draft = lock.with_name(f"{lock.name}.{me['host']}.{me['pid']}.tmp")
    try:
        with open(draft, "w") as fh:
            json.dump(me, fh)
        try:
            os.link(draft, lock)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
    finally:  # also on a full disk: nothing is left behind
        draft.unlink(missing_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
    except BaseException:
        lock.unlink(missing_ok=True)
        raise
    return True


@contextlib.contextmanager
def output_lock(output: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of ``output`` (a file or directory) while the block runs: ``.<name>.lock`` beside it, created
    exclusively (:func:`_create_lock`), holding this process's pid, host, start time and command line.

    A lock held by a live process, or by a process on another host (which cannot be checked from here), makes this
    one refuse with :class:`RunFailed` naming the owner; a lock left by a dead process on this host (a killed run) is
    stale and taken over. Re-entrant within a process. Yields the lock file's path.
    """
    output = Path(output).absolute()
    lock = output.with_name(f".{output.name}.lock")
    if lock in _HELD:
        _HELD[lock] += 1
        try:
            yield lock
        finally:
            _HELD[lock] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
          "started": datetime.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
    _remove_stale_drafts(lock, me["host"])
    for _ in range(2):
        if not _create_lock(lock, me):
            try:
                owner = json.loads(lock.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                owner = {}
            pid, host = owner.get("pid"), owner.get("host")
            if isinstance(pid, int) and host == me["host"] and not _alive(pid):
                logger.warning(f"{lock}: left by process {pid}, which is gone; taking it over")
                lock.unlink(missing_ok=True)
                continue
            if not isinstance(pid, int) and _age_s(lock) > UNWRITTEN_LOCK_S:
                # created but never written (a filesystem without hard links): its owner was killed in between
                logger.warning(f"{lock}: empty and {_age_s(lock):.0f} s old, left by a killed run; taking it over")
                lock.unlink(missing_ok=True)
                continue
            if not isinstance(pid, int):
                raise RunFailed(
                    f"{output}: another run is starting to write here ({lock} is still empty); wait for it, or "
                    f"delete {lock} if no run is starting"
                ) from None
            raise RunFailed(
                f"{output}: another run is writing here (pid {pid} on {host}, since {owner.get('started')}: "
                f"{owner.get('command')}); wait for it to finish, or delete {lock} if it is no longer running"
            ) from None
        break
    else:  # pragma: no cover - another process took the stale lock between our two attempts
        raise RunFailed(f"{output}: another run took over the stale lock {lock} just now")
    _HELD[lock] = 1
    try:
        yield lock
    finally:
        del _HELD[lock]
        lock.unlink(missing_ok=True)
