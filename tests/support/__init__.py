"""Shared test support: tiny models, oracle helpers, and scripts the tests run in subprocesses.

Subprocesses run these modules with `python -m tests.support.<module>`; `subprocess_env()` puts the repository
root on their PYTHONPATH so `tests` is importable there too (the tests run from the root).
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def subprocess_env(**extra: str) -> dict[str, str]:
    """os.environ plus `extra`, with the repository root first on PYTHONPATH."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **extra, "PYTHONPATH": path}


def facts_with_peft_hidden(module: str, out_dir, timeout: int = 600) -> dict:
    """Run `python -m <module> OUT_DIR --hide-peft` (peft unimportable in that process) and return the JSON
    facts its last stdout line holds; a failed run fails the test with its stderr."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", module, str(out_dir), "--hide-peft"], capture_output=True,
                          text=True, timeout=timeout, env=subprocess_env(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
