"""Measure what training keeps for backward: the activation memory a method costs, before a run is sized.

    saved_activation_bytes(model, step) -> bytes

`step()` runs one training forward and returns the loss. While it runs, every tensor autograd saves for
backward is wrapped (torch.autograd.graph.saved_tensors_hooks) in a holder only the graph references; at the
end of the forward the holders still alive are the tensors backward will read. Each storage counts once (q,
k and v saving the same input cost it once), the model's parameters and buffers are left out (they are held
anyway), and tensors of graph parts freed during the forward drop out. Then the loss's backward runs, so the
graph is freed as in a real step. Deterministic: no timing, no allocator statistics.
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch import nn


class _Holder:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def saved_activation_bytes(model: nn.Module, step: Callable[[], torch.Tensor], backward: bool = True) -> int:
    """Bytes of the tensors autograd keeps at the end of `step()` (one training forward returning the loss)."""
    resident = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    holders: list[weakref.ref] = []

    def pack(tensor: torch.Tensor) -> _Holder:
        holder = _Holder(tensor)
        holders.append(weakref.ref(holder))
        return holder

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda holder: holder.tensor):
        loss = step()
    seen: dict[int, int] = {}
    for ref in holders:
        holder = ref()
        if holder is not None and holder.tensor.device.type != "meta":
            storage = holder.tensor.untyped_storage()
            if storage.data_ptr() not in resident:
                seen[storage.data_ptr()] = storage.nbytes()
    if backward:
        loss.backward()
    return sum(seen.values())
