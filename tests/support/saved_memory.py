"""Bytes autograd keeps for backward after one training forward (saved-activation memory tests)."""
from __future__ import annotations

import weakref

import torch


def saved_bytes(model, inputs) -> int:
    """Bytes of the tensors autograd still keeps at the end of one training forward: each storage once, the
    model's parameters and buffers left out. Each saved tensor is packed in a holder that only the graph
    references, so tensors of graph parts freed during the forward (PEFT's DoRA builds B A through a discarded
    graph) drop out, and no freed address is counted twice."""
    resident = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    holders = []

    class Holder:
        __slots__ = ("t", "__weakref__")

        def __init__(self, t):
            self.t = t

    def pack(t):
        holder = Holder(t)
        holders.append(weakref.ref(holder))
        return holder

    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda holder: holder.t):
        loss = model(input_ids=inputs).logits.float().square().mean()
    seen = {}
    for ref in holders:
        holder = ref()
        if holder is not None and holder.t.device.type != "meta":
            storage = holder.t.untyped_storage()
            if storage.data_ptr() not in resident:
                seen[storage.data_ptr()] = storage.nbytes()
    loss.backward()
    return sum(seen.values())
