"""Mixed-batch LoRA: one adapter per sample in the same forward (multi-tenant serving).

Linear layers gather stacked factors per sample and run two batched matmuls, whatever the number of
adapters:

    A_stack: (n_adapters + 1, R, in)     B_stack: (n_adapters + 1, out, R) * scaling     (R = max rank, zero-padded;
    slot 0 is all zeros = "no adapter")   delta = bmm(bmm(x, A_stack[slot]^T), B_stack[slot]^T)

The stacks are cached while the adapter weights are unchanged. Other layer types (and DoRA, or dropout in
training) run each adapter on its own rows of the batch.
"""
from __future__ import annotations

import torch
from torch import nn

from ...naming import names_for_rows


def _scaling_key(s):
    # a hot-swap scaling is a tensor filled in place: its version says when it changed
    return (id(s), s._version) if isinstance(s, torch.Tensor) else s


def _versions(layer, names) -> tuple:
    return tuple((layer.lora_A[n].weight._version, layer.lora_B[n].weight._version,
                  layer.lora_A[n].weight.data_ptr(), layer.lora_B[n].weight.data_ptr(),
                  _scaling_key(layer.scaling[n])) for n in names)


def _stacks(layer) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    names = [n for n in layer.r if n in layer.lora_A]
    key = (tuple(names), _versions(layer, names))
    cached = getattr(layer, "_mixed_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    rank = max(layer.lora_A[n].weight.shape[0] for n in names)   # not r: hot-swap padding may exceed it
    A0, B0 = layer.lora_A[names[0]].weight, layer.lora_B[names[0]].weight
    A = A0.new_zeros(len(names) + 1, rank, A0.shape[1])
    B = B0.new_zeros(len(names) + 1, B0.shape[0], rank)
    with torch.no_grad():
        for slot, n in enumerate(names, start=1):
            r = layer.lora_A[n].weight.shape[0]
            A[slot, :r] = layer.lora_A[n].weight
            B[slot, :, :r] = layer.lora_B[n].weight * layer.scaling[n]
    value = (names, A, B)
    layer._mixed_cache = (key, value)
    return value


def _slots(layer, names: list[str], batch_adapters: tuple[str, ...], device) -> torch.Tensor:
    key = (tuple(names), batch_adapters, device)
    cached = getattr(layer, "_mixed_slots", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    position = {n: i for i, n in enumerate(names, start=1)}
    slots = torch.tensor([position.get(a, 0) for a in batch_adapters], device=device)
    layer._mixed_slots = (key, slots)
    return slots


def _stackable(layer, batch_adapters) -> bool:
    if type(layer).__name__ != "Linear" or torch.is_grad_enabled():
        return False
    used = set(batch_adapters) & set(layer.r)
    return bool(used) and not any(layer.use_dora[n] for n in used) and not any(
        layer.training and not isinstance(layer.lora_dropout[n], nn.Identity) for n in used)


def mixed_adapter_output(layer, x: torch.Tensor, result: torch.Tensor, batch_adapters: tuple[str, ...]):
    batch_adapters = names_for_rows(batch_adapters, x.shape[0])
    if _stackable(layer, batch_adapters):
        names, A, B = _stacks(layer)
        slots = _slots(layer, names, batch_adapters, x.device)
        x3 = x.reshape(x.shape[0], -1, x.shape[-1]).to(A.dtype)
        delta = torch.bmm(torch.bmm(x3, A[slots].transpose(1, 2)), B[slots].transpose(1, 2))
        return result + delta.reshape(result.shape).to(result.dtype)
    return grouped_output(layer, x, result, batch_adapters)


def grouped_output(layer, x, result, batch_adapters):
    """Run each adapter on its own rows (any layer type, DoRA, training)."""
    result = result.clone()
    for name in dict.fromkeys(batch_adapters):
        if name not in layer.r:
            continue
        rows = [i for i, a in enumerate(batch_adapters) if a == name]
        index = torch.tensor(rows, device=x.device)
        sub = layer._adapter_output(x[index], name, result[index])
        result = result.index_copy(0, index, sub)
    return result
