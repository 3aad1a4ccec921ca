"""precip_cvae.heap: freed maps stay in the process, so repeating a step does not page-fault them in again."""

import platform
import subprocess
import sys

import pytest

from precip_cvae import heap

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# 16 maps of 2 MiB allocated, touched and freed together, like a step's activations: 8,192 pages a step
STEP = """
import resource, sys, torch
from precip_cvae.heap import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def step():
    maps = [torch.ones(2**19 + 1000 * k) for k in range(16)]
    return sum(float(m[-1]) for m in maps)
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_step(mode: str, env: dict | None = None) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", STEP, mode], capture_output=True, text=True, check=True, env=env)
    kept, faults = out.stdout.split()
    return kept == "True", float(faults)


@glibc
def test_a_repeated_step_reuses_its_freed_maps():
    kept, faults = _faults_per_step("keep")
    assert kept
    assert faults < 0.05 * 8192  # glibc's defaults: ~3,400 a step on the machine this was written on
    _, default = _faults_per_step("default")
    assert faults < default


@glibc
def test_the_users_own_malloc_settings_are_left_alone(monkeypatch):
    import os

    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="131072")
    kept, _ = _faults_per_step("keep", env)
    assert not kept
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072")
    assert not heap.keep_freed_memory()
