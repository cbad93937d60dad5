"""Progress bars for long operations (tqdm), silenced by SURGERY_QUIET=1 or quiet=True."""
from __future__ import annotations

import os


def quiet() -> bool:
    return os.environ.get("SURGERY_QUIET", "") not in ("", "0", "false", "False")


def bar(items, desc: str, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=quiet(), leave=False, **kwargs)
