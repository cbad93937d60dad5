"""How one layer's rotated dimension splits into OFT blocks: r blocks of oft_block_size, r x size = dim.

The rotated dimension is a Linear's in_features, a Conv2d's in_channels x k x k (one unfolded patch) and an
Embedding's embedding_dim. PEFT 0.21.2 silently moves a size that does not divide it to a nearby divisor
(`peft_adjusted` reproduces its choice); surgery refuses it at plan time instead, naming the valid sizes,
so a typo cannot train other blocks than the config says.
"""
from __future__ import annotations

from typing import Optional


def divisors(dim: int) -> list[int]:
    return [d for d in range(1, dim + 1) if dim % d == 0]


def block_layout(dim: int, r: int, block_size: int) -> Optional[tuple[int, int]]:
    """(r, oft_block_size) for a dimension `dim` from the config's pair (one of them 0), or None when the
    given one does not divide `dim`."""
    given = block_size if r == 0 else r
    if given <= 0 or given > dim or dim % given:
        return None
    return (dim // block_size, block_size) if r == 0 else (r, dim // r)


def peft_adjusted(dim: int, value: int) -> int:
    """The divisor PEFT's adjust_oft_parameters picks for a value that does not divide `dim`: the nearer of
    the next divisors below and above (the lower one on a tie); `dim` itself when the value exceeds it."""
    if value >= dim:
        return dim
    higher = value
    while higher <= dim and dim % higher:
        higher += 1
    lower = value
    while lower > 1 and dim % lower:
        lower -= 1
    return lower if value - lower <= higher - value else higher


def layout_refusal(dim: int, what: str, fqn: str, config) -> Optional[str]:
    """Why config's r / oft_block_size cannot split module `fqn`'s rotated dimension (`what` names it), or None."""
    if block_layout(dim, config.r, config.oft_block_size) is not None:
        return None
    key, value = ("oft_block_size", config.oft_block_size) if config.r == 0 else ("r", config.r)
    valid = ", ".join(map(str, divisors(dim)))
    return (f"{key}={value} does not divide {what}={dim} of {fqn!r}: OFT splits it into r blocks of "
            f"oft_block_size (r x oft_block_size = {dim}); valid values of {key} for this module: {valid}. "
            f"(PEFT 0.21.2 would silently use {key}={peft_adjusted(dim, value)} here.) Pick one of those, or leave "
            f"the module out with exclude_modules")
