"""Progress bars for long operations (tqdm on stderr): merging (merge_and_unload(progressbar=True)), large
adapter loads, `surgery merge`, the demo's training. Silenced by the environment variable SURGERY_QUIET=1 or
the CLI's --quiet (which also silences transformers' and huggingface_hub's bars). Library code reports
through `logging`, never print.
"""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def quiet_mode(enabled: bool = True):
    """Within the block: no surgery bars (SURGERY_QUIET=1), and none from transformers or huggingface_hub
    either (model loading, downloads). Everything is restored afterwards. Used by the CLI's --quiet."""
    if not enabled:
        yield
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    saved = os.environ.get("SURGERY_QUIET")
    os.environ["SURGERY_QUIET"] = "1"
    hf_on, hub_on = hf_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("SURGERY_QUIET", None)
        else:
            os.environ["SURGERY_QUIET"] = saved
        if hf_on:
            hf_logging.enable_progress_bar()
        if hub_on:
            hub_utils.enable_progress_bars()
