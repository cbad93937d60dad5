"""CPU training: keep freed memory in the process instead of handing it back to the kernel (opt-in).

glibc returns every large freed block (above a threshold that tops out at 32 MB) to the kernel, and the
next allocation of the same size faults its pages in again, zero-filled. A training step frees and reallocates
the same activations and gradients every time: on a 45M-parameter Llama (batch 4 x 128) that is ~64,000 page
faults per step, 15-20% of the step time on a 2-core VM (docs/training.md). Raising glibc's mmap and trim
thresholds keeps those blocks for reuse: the faults drop to ~0. The cost is that the process keeps its peak
heap instead of shrinking after it. Same effect as starting Python with
`MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647` (or running under jemalloc/tcmalloc).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1   # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_LARGEST = 2 ** 31 - 1   # mallopt takes an int


def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory for reuse (process-wide, for the rest of the process). Returns True when
    applied, False where it does not apply (not Linux/glibc); never raises."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGEST))
