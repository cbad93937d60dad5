"""PEFT's rules tying a layer's rotated size F to the block layout, and the layout they give.

F is in_features for a Linear, in_channels * k * k for a Conv2d. With f = boft_n_butterfly_factor - 1:

    boft_block_num = D:   D divides F; 2**f divides D             -> b = F / D
    boft_block_size = b:  b divides F; b * 2**f <= F and divides F -> D = F / b
    f > 0:                D and b even
"""
from __future__ import annotations

from typing import Optional


def layout(features: int, config) -> tuple[int, int]:
    """(block size, block count) for a layer whose rotation spans `features` (the rules already hold)."""
    if config.boft_block_size:
        return config.boft_block_size, features // config.boft_block_size
    return features // config.boft_block_num, config.boft_block_num


def _fits(features: int, size: int, extra: int) -> bool:
    """Whether blocks of `size` over `features` satisfy every rule for `extra` = factors - 1."""
    if size <= 0 or features % size:
        return False
    count = features // size
    if extra == 0:
        return True
    return size % 2 == 0 and count % 2 == 0 and count % (2 ** extra) == 0


def problem(features: int, config, what: str) -> Optional[str]:
    """Why the config's blocks cannot tile a rotation of `features` (`what` names it), with the values that
    would; None when they can."""
    extra = config.boft_n_butterfly_factor - 1
    size, num = config.boft_block_size, config.boft_block_num
    factor = f" with boft_n_butterfly_factor = {config.boft_n_butterfly_factor}" if extra else ""
    if size:
        if _fits(features, size, extra):
            return None
        sizes = _valid_sizes(features, extra)
        return (f"boft_block_size = {size} cannot tile {what}{factor}: the block size must divide it"
                + (f", be even, and 2**{extra} blocks of it must divide it too" if extra else "")
                + f"; valid boft_block_size values here: {_listing(sizes)}")
    if features % num == 0 and _fits(features, features // num, extra):
        return None
    counts = sorted(features // b for b in _valid_sizes(features, extra))
    return (f"boft_block_num = {num} cannot tile {what}{factor}: the block count must divide it"
            + (f", be a multiple of 2**{extra}, and leave even blocks" if extra else "")
            + f"; valid boft_block_num values here: {_listing(counts)}")


def _valid_sizes(features: int, extra: int) -> list[int]:
    divisors = {d for i in range(1, int(features ** 0.5) + 1) if features % i == 0 for d in (i, features // i)}
    return sorted(b for b in divisors if _fits(features, b, extra))


def _listing(values: list[int]) -> str:
    if not values:
        return "none (use fewer butterfly factors)"
    shown = ", ".join(map(str, values[:12]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > 12 else "")
