"""How LoKr splits a layer: out = a * b and in = c * d (PEFT's factorization(), exactly), and which factors
are full matrices, low-rank products or a CP core (PEFT's rules).

    ΔW = s (W1 ⊗ W2),   W1: (a, c),   W2: (b, d[, kernel])
    W1 is A1 B1 (rank r) when decompose_both and r < max(a, c) / 2, else one full matrix
    W2 is A2 B2 (rank r) when r < max(b, d) / 2, else full; on a conv with a kernel > 1 and
       use_effective_conv2d, the low-rank W2 is a CP core T2 (r, r, kh, kw) with mode factors (r, b), (r, d)
"""
from __future__ import annotations

from typing import NamedTuple

from torch import nn

from ..lycoris.conv import in_per_group, kernel, uses_cp


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split `dimension` into (m, n) with m * n = dimension, PEFT's rule:

    - a positive `factor` that divides it: (factor, dimension / factor), in that order (m may exceed n);
    - otherwise the divisor pair nearest the square root (m <= n), walking m up while m + n shrinks and m stays
      <= factor (-1: no bound), e.g. 256 -> (16, 16), 128 -> (8, 16), 127 -> (1, 127), 128 with 3 -> (2, 64).
    """
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    bound = dimension if factor == -1 else factor
    m, n = 1, dimension
    while m < n:
        candidate = m + 1
        while dimension % candidate:
            candidate += 1
        other = dimension // candidate
        if candidate + other > m + n or candidate > bound:
            break
        m, n = candidate, other
    return (n, m) if m > n else (m, n)


class KronLayout(NamedTuple):
    """One module's LoKr shapes: out = a * b, in = c * d (in per group for a conv)."""

    a: int
    b: int
    c: int
    d: int
    kernel: tuple[int, ...]   # () for a Linear
    full_w1: bool             # W1 one (a, c) matrix, else A1 (a, r) @ B1 (r, c)
    full_w2: bool             # W2 one (b, d, *kernel) tensor, else low-rank (or CP)
    cp: bool                  # low-rank W2 as a CP core (effective conv2d)

    def describe(self, r: int) -> str:
        """'(a x c) ⊗ (b x d)' with the low-rank parts spelt out, for the audit table."""
        k = "".join(f"x{size}" for size in self.kernel)
        w1 = f"{self.a}x{self.c}" if self.full_w1 else f"{self.a}x{r}·{r}x{self.c}"
        if self.full_w2:
            w2 = f"{self.b}x{self.d}{k}"
        elif self.cp:
            w2 = f"CP {r}x{r}{k}·{r}x{self.b}·{r}x{self.d}"
        else:
            w2 = f"{self.b}x{r}·{r}x{self.d}{k}"
        return f"({w1}) ⊗ ({w2})"


def kron_layout(base: nn.Module, r: int, config) -> KronLayout:
    out_f = base.out_channels if kernel(base) else base.out_features
    c, d = factorization(in_per_group(base), config.decompose_factor)
    a, b = factorization(out_f, config.decompose_factor)
    full_w1 = not (config.decompose_both and r < max(a, c) / 2)
    full_w2 = not r < max(b, d) / 2
    return KronLayout(a, b, c, d, kernel(base), full_w1, full_w2, cp=not full_w2 and uses_cp(base, config))
