"""LoHa's products of factors: the dense delta (PEFT's op order, for merging and inference) and the factored
form the training path multiplies by instead.

    ΔW  = s (W1a W1b) ⊙ (W2a W2b)                       W1a, W2a: (out, r)   W1b, W2b: (r, in)
    CP  = s (T1 ×₁ W1a ×₂ W1b) ⊙ (T2 ×₁ W2a ×₂ W2b)    T: (r, r, kh, kw)    Wa: (r, out)   Wb: (r, in / groups)

The Hadamard product of two rank-r matrices is the product of their row-wise Khatri-Rao factors:

    (W1a W1b) ⊙ (W2a W2b) = K_a K_b,   K_a[i, (p, q)] = W1a[i, p] W2a[i, q]     (out, r²)
                                       K_b[(p, q), j] = W1b[p, j] W2b[q, j]     (r², in)

so ΔW x = K_a (K_b x) costs r² (in + out) per token instead of in * out, and ΔW is never formed.
"""
from __future__ import annotations

import torch


def hadamard_delta(w1a, w1b, w2a, w2b, scale: float) -> torch.Tensor:
    """s (W1a W1b) ⊙ (W2a W2b), as PEFT computes it (same ops, same order: bit-identical)."""
    return ((w1a @ w1b) * (w2a @ w2b)) * scale


def rebuild_cp(t, wa, wb) -> torch.Tensor:
    """T ×₁ Wa ×₂ Wb: (out, in, kh, kw) from the CP core and its two mode factors (PEFT's contraction)."""
    return torch.einsum("i j k l, j r, i p -> p r k l", t, wb, wa)


def hadamard_delta_cp(t1, w1a, w1b, t2, w2a, w2b, scale: float) -> torch.Tensor:
    return rebuild_cp(t1, w1a, w1b) * rebuild_cp(t2, w2a, w2b) * scale


@torch.no_grad()
def hadamard_add_(weight: torch.Tensor, w1a, w1b, w2a, w2b, scale: float, sign: int) -> torch.Tensor:
    """weight ±= ΔW with one (out, in) temporary, rounding exactly as `weight += hadamard_delta(...)`."""
    delta = torch.mm(w1a, w1b)
    delta.mul_(w2a @ w2b).mul_(scale)
    delta = delta.reshape(weight.shape)
    return weight.add_(delta) if sign > 0 else weight.sub_(delta)


def khatri_rao(w1a, w1b, w2a, w2b, row_scale: torch.Tensor | float):
    """(K_a, K_b) with ΔW = K_a K_b; `row_scale` (a number or an (out,) vector: scaling x rank-dropout
    mask) is folded into the (out, r) factor, the cheapest place for it."""
    out, r1 = w1a.shape
    r2 = w2a.shape[1]
    left = w1a * (row_scale.unsqueeze(1) if isinstance(row_scale, torch.Tensor) else row_scale)
    k_a = (left.unsqueeze(2) * w2a.unsqueeze(1)).reshape(out, r1 * r2)
    k_b = (w1b.unsqueeze(1) * w2b.unsqueeze(0)).reshape(r1 * r2, w1b.shape[1])
    return k_a, k_b


def factored_is_cheaper(r: int, in_f: int, out_f: int) -> bool:
    """Per token, K_a (K_b x) costs r² (in + out) multiply-adds; the dense ΔW x costs in * out."""
    return r * r * (in_f + out_f) < in_f * out_f
