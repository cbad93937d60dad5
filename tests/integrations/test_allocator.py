"""surgery.tune_cpu_allocator: freed large blocks are reused instead of re-faulted (Linux/glibc), checked in
fresh processes so the rest of the suite keeps the default allocator."""
from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch, surgery
applied = surgery.tune_cpu_allocator() if sys.argv[1] == "tuned" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):                                  # warm up: the first allocations fault in any case
    torch.ones(16 * 2**20)                          # 64 MB, above glibc's largest default mmap threshold
before = faults()
for _ in range(5):
    torch.ones(16 * 2**20)
print(applied, faults() - before)
"""


def _probe(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_tuned_allocator_reuses_freed_blocks_instead_of_faulting_them_in_again():
    _, default_faults = _probe("default")
    applied, tuned_faults = _probe("tuned")
    assert default_faults > 5 * 16_000 * 0.9         # every 64 MB allocation faults its 16,384 pages again
    assert applied == "True" and tuned_faults < 1_000
