"""How one layer's rotated dimension splits into OFT blocks: r blocks of oft_block_size, r x size = dim.

The rotated dimension is a Linear's in_features, a Conv2d's in_channels x k x k (one unfolded patch) and an
Embedding's embedding_dim. A size that does not divide it is moved to a nearby divisor, as PEFT 0.21.2 does
(`peft_adjusted` reproduces its choice, so adapters train and save as with PEFT); unlike PEFT, the plan says so
per module, naming the valid sizes, so a typo is seen before training.
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


def adjusted_layout(dim: int, what: str, fqn: str, config) -> tuple[tuple[int, int], str]:
    """((r, oft_block_size), plan warning) for a config whose r / oft_block_size does not divide module `fqn`'s
    rotated dimension (`what` names it): PEFT's adjustment, and a warning in its words plus the valid sizes."""
    key, value = ("oft_block_size", config.oft_block_size) if config.r == 0 else ("r", config.r)
    adjusted = peft_adjusted(dim, value)
    layout = (dim // adjusted, adjusted) if config.r == 0 else (adjusted, dim // adjusted)
    valid = ", ".join(map(str, divisors(dim)))
    return layout, (f"{fqn}: Invalid `{key}` ({value})! Adjusted `{key}` to ({adjusted}), as PEFT does: OFT splits "
                    f"{what}={dim} into r blocks of oft_block_size (r x oft_block_size = {dim}), so {key} must "
                    f"divide it; valid values for this module: {valid}. Set one of those to silence this")
