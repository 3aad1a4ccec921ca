"""Keeping freed memory in the process, so that a training step on a CPU does not page-fault its maps in anew.

glibc's ``malloc`` gives freed memory back to the kernel: blocks above its mmap threshold (128 KiB, raised up to
32 MiB as blocks are freed) are unmapped on ``free``, and a free top of the heap above twice that threshold is
trimmed. A training step allocates and frees the same maps every step, so each step touches fresh pages, and every
4 KiB page costs a fault and zeroing in the kernel. On the Fraser basin's SRDRN (maps of 14 × 31, batch 64, on 2
cores) that was 3,500-5,200 faults a step, 11-15 ms of system time in a 42-51 ms step; with the settings below, none,
and the step took 32-40 ms. The generator at the reference geometry, whose maps are larger than 32 MiB or few, did
not change beyond the machine's noise.

:func:`keep_freed_memory` raises the mmap threshold to glibc's largest (32 MiB) and keeps up to
:data:`TRIM_BYTES` free at the top of the heap: the process holds on to what a step freed (its resident size stays at
its peak) and the next step reuses it. Only where the C library is glibc, and not where the user set glibc's own
``MALLOC_*_`` variables or ``GLIBC_TUNABLES``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: glibc's largest mmap threshold on a 64-bit machine (HEAP_MAX_SIZE / 2): larger blocks are always mapped anew.
MMAP_BYTES = 32 * 2**20
#: free memory kept at the top of the heap, at most.
TRIM_BYTES = 1 << 30

_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks of up to :data:`MMAP_BYTES` for reuse rather than return them to the
    kernel. Returns True when it did; False where the C library is not glibc or the user set malloc's variables."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _USER_SETTINGS) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_BYTES) == 1
    log.debug("malloc keeps freed blocks up to %d bytes: %s", MMAP_BYTES, done)
    return done
