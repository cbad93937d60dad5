"""LoKr's Kronecker products: the dense delta (PEFT's op order, for merging and inference) and the factored
product the training path uses instead.

    ΔW = s (W1 ⊗ W2)                    W1: (a, c),  W2: (b, d),  ΔW: (a b, c d)
    ΔW[i b + p, l d + q] = s W1[i, l] W2[p, q]

so with x viewed as X: (tokens, c, d),  (ΔW x) viewed as (tokens, a, b) is  s W1 X W2ᵀ  (two small matmuls,
a d (c + b) or c b (a + d) multiply-adds per token instead of a b c d), and ΔW is never formed.
"""
from __future__ import annotations

import torch


def rebuild_cp(t, wa, wb) -> torch.Tensor:
    """T ×₁ Wa ×₂ Wb: (b, d, kh, kw) from the CP core (r, r, kh, kw) and its mode factors (PEFT's contraction)."""
    return torch.einsum("i j k l, i p, j r -> p r k l", t, wa, wb)


def kron_delta(w1: torch.Tensor, w2: torch.Tensor, scale: float) -> torch.Tensor:
    """s (W1 ⊗ W2) as PEFT computes it (torch.kron; a 4-d W2 gets W1 as (a, c, 1, 1))."""
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    # canonical strides: the CP rebuild of a Conv1d core (.., k, 1) is "contiguous" with a stride on its size-1
    # axis that torch.kron's internal view rejects (PEFT 0.21.2 fails there on torch 2.13)
    w2 = w2.contiguous().view(-1).view(w2.shape)
    return torch.kron(w1, w2) * scale


@torch.no_grad()
def kron_add_(weight: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, scale: float, sign: int) -> torch.Tensor:
    """weight ±= s (W1 ⊗ W2) for a 2-d W2, with one temporary: the Kronecker product is a broadcast product on
    weight viewed as (a, b, c, d'), elementwise the same products (and roundings) as torch.kron."""
    (a, c), (b, d) = w1.shape, w2.shape
    delta = (w1.view(a, 1, c, 1) * w2.view(1, b, 1, d)).mul_(scale)
    view = weight.view(a, b, c, d)
    view.add_(delta) if sign > 0 else view.sub_(delta)
    return weight


def kron_apply(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """x (W1 ⊗ W2)ᵀ without forming the product: X W2ᵀ then W1 (X W2ᵀ), or W1 X then (W1 X) W2ᵀ, whichever
    costs fewer multiply-adds."""
    (a, c), (b, d) = w1.shape, w2.shape
    X = x.reshape(-1, c, d)
    if c * b * (d + a) <= a * d * (c + b):
        y = torch.matmul(w1, X @ w2.T)           # (tokens, c, b) -> (tokens, a, b)
    else:
        y = torch.matmul(w1, X) @ w2.T           # (tokens, a, d) -> (tokens, a, b)
    return y.reshape(*x.shape[:-1], a * b)


def factored_is_cheaper(a: int, b: int, c: int, d: int) -> bool:
    return min(c * b * (d + a), a * d * (c + b)) < a * b * c * d
