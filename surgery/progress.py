"""Progress bars for long operations (tqdm), silenced by SURGERY_QUIET=1 (the CLI's --quiet) or quiet=True.

Library code reports through `logging`; bars go to stderr and never to stdout.
"""
from __future__ import annotations

import os


def quiet() -> bool:
    return os.environ.get("SURGERY_QUIET", "") not in ("", "0", "false", "False")


def bar(items, desc: str, min_items: int = 0, **kwargs):
    """tqdm over `items` (plain iteration when quiet, or when there are fewer than `min_items` of them)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", False)
    try:
        few = len(items) < min_items
    except TypeError:
        few = False
    return tqdm(items, desc=desc, disable=quiet() or few, **kwargs)
