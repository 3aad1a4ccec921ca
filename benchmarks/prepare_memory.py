"""Peak memory of `prepare` on a large SRDRN directory, as a ratio to the size of its target arrays.

    python benchmarks/prepare_memory.py --days 15000 --work /tmp/prepare_memory

Writes a random SRDRN directory at the reference geometry (memory-mapped, never all in memory), runs
`precip-cvae prepare` on it in a child process and prints the child's peak resident memory, the size of the
obs arrays, and their ratio. A ratio well below 1 shows that prepare streams rather than loading everything.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_fake_srdrn(root: Path, days: int, hr=(156, 132), lr=(13, 11), channels=6, test_fraction=0.2) -> int:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n_test = int(days * test_fraction)
    n_train = days - n_test
    mean = rng.uniform(0.3, 1.0, hr).astype(np.float32)
    std = rng.uniform(0.5, 1.2, hr).astype(np.float32)
    for split, n in (("train", n_train), ("test", n_test)):
        x = np.lib.format.open_memmap(
            root / f"predictors_{split}_mean_std_separate.npy", "w+", np.float32, (n, *lr, channels)
        )
        y = np.lib.format.open_memmap(root / f"obs_{split}_mean_std_single.npy", "w+", np.float32, (n, *hr))
        for start in range(0, n, 500):
            stop = min(start + 500, n)
            x[start:stop] = rng.standard_normal((stop - start, *lr, channels), dtype=np.float32)
            y[start:stop] = rng.standard_normal((stop - start, *hr), dtype=np.float32)
        x.flush()
        y.flush()
        del x, y
    np.save(root / "ERA5_mean_train.npy", mean)
    np.save(root / "ERA5_std_train.npy", std)
    land = np.ones(hr, np.uint8)
    land[:, :20] = 0
    np.save(root / "land_mask.npy", land)
    return days * hr[0] * hr[1] * 4


def measure_prepare(days: int, work: Path) -> dict:
    """Write a random SRDRN directory of ``days`` days, time copying it, then run `prepare` on it in a child process:
    seconds, the copy's seconds, the child's peak resident memory and the size of the obs arrays."""
    shutil.rmtree(work, ignore_errors=True)
    # Written in a separate process so this one stays small: Linux keeps the peak RSS of a forked child
    # across exec, so a child forked from a big parent would report the parent's size.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        obs_bytes = pool.apply(write_fake_srdrn, (work / "srdrn", days))
    started = time.perf_counter()
    shutil.copytree(work / "srdrn", work / "copy")
    os.sync()
    copy_seconds = time.perf_counter() - started
    shutil.rmtree(work / "copy")
    started = time.perf_counter()
    argv = [sys.executable, "-m", "precip_cvae", "prepare", "--input_dir", str(work / "srdrn"), "--output_dir",
            str(work / "out"), "--quiet"]  # fmt: skip
    child = subprocess.Popen(argv)
    # wait4 gives this child's own usage (RUSAGE_CHILDREN would mix in every child ever waited for).
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"prepare failed with status {status}")
    os.sync()
    seconds = time.perf_counter() - started
    shutil.rmtree(work, ignore_errors=True)
    return {
        "days": days,
        "seconds": seconds,
        "copy_seconds": copy_seconds,
        "peak_rss": usage.ru_maxrss * 1024,  # Linux reports KiB
        "obs_bytes": obs_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=15000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/prepare_memory"))
    parser.add_argument("--json", action="store_true", help="print the measurements as one JSON line")
    args = parser.parse_args()
    r = measure_prepare(args.days, args.work)
    if args.json:
        print(json.dumps(r))
        return
    print(f"days {args.days}, obs arrays {r['obs_bytes'] / 2**30:.2f} GiB, prepare took {r['seconds']:.0f} s "
          f"({r['seconds'] / r['copy_seconds']:.1f} x copying the input)")  # fmt: skip
    print(f"peak RSS of prepare {r['peak_rss'] / 2**20:.0f} MiB; ratio peak RSS / obs arrays = "
          f"{r['peak_rss'] / r['obs_bytes']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
