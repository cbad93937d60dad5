"""What a model must fit, for plans on quantized bases: the base's bytes as stored (a 4-bit weight with its
block scales, an 8-bit weight with its row scales), the adapter's, and what training adds.

    base      = sum over quantized layers of their stored bytes  +  every other parameter and buffer, once
    adapter   = added parameters x 4 (float32: surgery, as PEFT, keeps adapters float32 on quantized and
                half-precision bases, autocast_adapter_dtype)
    training  = adapter x 3 more: its gradients and AdamW's two moments (activations are not counted)
"""
from __future__ import annotations

from torch import nn

from ..graph.walk import base_modules
from ..quantized import backend_of, describe

ADAPTER_BYTES = 4


def storage_label(module: nn.Module) -> str:
    """'nf4, block 64' (4-bit) or 'int8, row scales' (8-bit) for a quantized module; '' otherwise."""
    info = describe(module)
    if info is None:
        return ""
    if info["bits"] == 8:
        return "int8, row scales"
    return f"{info['format']}, block {info['block_size']}" + (", double quant" if info["double_quant"] else "")


def memory_figures(model: nn.Module, added_params: int) -> dict:
    """The plan's `memory` entry (empty for a model without quantized layers)."""
    # Quantized layers are base layers: looking for them among the base's modules costs the same with 1 adapter
    # or 100 (the full walk below, which counts every tensor, only runs for a quantized model).
    if not any(backend_of(module) is not None for _, module in base_modules(model)):
        return {}
    base, counted, formats = 0, set(), {}
    for _, module in model.named_modules():
        backend = backend_of(module)
        if backend is None:
            continue
        base += backend.weight_bytes(module)
        counted.add(id(module.weight))
        label = f"{backend.name} ({storage_label(module)})"
        formats[label] = formats.get(label, 0) + 1
    if not formats:
        return {}
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers()) if id(t) not in counted}
    base += sum(t.numel() * t.element_size() for t in tensors.values())
    adapter = added_params * ADAPTER_BYTES
    return {"base_bytes": base, "adapter_bytes": adapter, "training_extra_bytes": 3 * adapter,
            "total_bytes": base + 4 * adapter, "quantized_layers": formats}


def memory_lines(memory: dict) -> list[str]:
    """The audit table's memory lines."""
    if not memory:
        return []
    layers = ", ".join(f"{n} x {label}" for label, n in memory["quantized_layers"].items())
    return [f"quantized base: {layers}",
            f"memory: base {_size(memory['base_bytes'])} + adapter {_size(memory['adapter_bytes'])} (float32) "
            f"+ training {_size(memory['training_extra_bytes'])} (adapter gradients, AdamW moments) = "
            f"{_size(memory['total_bytes'])} to fit, before activations"]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,d} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"
