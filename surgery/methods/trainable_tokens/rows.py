"""Forward with some rows of a weight replaced, without building the replaced weight.

PEFT builds W' = W.index_copy(0, indices, delta) on every forward (a copy of the whole vocabulary matrix) and runs
the layer on W'. The same outputs and gradients come from the base weight plus the few new rows:

    embedding   y[p] = delta[j]  if ids[p] == indices[j],  else  W[ids[p]]     (a lookup in delta, then a where)
    linear      y[..., indices] = x @ delta^T (+ b[indices]),  the other outputs x @ W^T + b

A swap is (indices, slot, delta): `slot` maps a token id to its row of delta (-1: not a trainable token).
`replaced_weight` is PEFT's W', for the embedding options the shortcut does not reproduce (max_norm renormalises
the looked-up rows in place, scale_grad_by_freq and sparse gradients, a trainable padding row that must get
no gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def replaced_weight(weight: torch.Tensor, swaps) -> torch.Tensor:
    """W with each swap's rows replaced by its delta (differentiable in delta)."""
    for indices, _, delta in swaps:
        weight = weight.index_copy(0, indices, delta.to(weight))
    return weight


def needs_replaced_weight(base: nn.Embedding) -> bool:
    """Embedding options the shortcut does not reproduce (the layer also checks for a trainable padding row)."""
    return base.max_norm is not None or base.scale_grad_by_freq or base.sparse


def embed(base: nn.Embedding, ids: torch.Tensor, swaps, full: bool) -> torch.Tensor:
    """The base lookup with the swapped rows (full: through PEFT's replaced weight)."""
    if full:
        return F.embedding(ids, replaced_weight(base.weight, swaps), padding_idx=base.padding_idx,
                           max_norm=base.max_norm, norm_type=base.norm_type,
                           scale_grad_by_freq=base.scale_grad_by_freq, sparse=base.sparse)
    out = F.embedding(ids, base.weight, padding_idx=base.padding_idx)
    for _, slot, delta in swaps:
        where = slot[ids]
        rows = F.embedding(where.clamp(min=0), delta.to(out.dtype))
        out = torch.where((where >= 0).unsqueeze(-1), rows, out)
    return out


def linear(base: nn.Linear, x: torch.Tensor, swaps) -> torch.Tensor:
    """x @ W^T + b with the swapped rows' outputs computed from delta."""
    weight, bias = base.weight, base.bias
    out = F.linear(x, weight, bias)
    for indices, _, delta in swaps:
        cols = F.linear(x, delta.to(weight.dtype), bias[indices] if bias is not None else None)
        out = out.index_copy(-1, indices, cols)
    return out


