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
