"""Where one LoRA adapter's tensors live on a model, and how a factor of a smaller rank fits a bigger slot.

Hot-swapping (hotswap.py) and padding for compiled hot-swapping (hotswap_prepare.py) both work on "slots":
one tensor of one adapter on one LoRA layer, keyed by its state-dict key (`<layer path>.lora_A.<adapter>.weight`,
`<layer path>.lora_embedding_A.<adapter>`, ...). Found structurally (the layer's containers), never by substring.

The rank axis of a factor:  A (lora_A, lora_embedding_A): axis 0, (r, in, ...)
                            B (lora_B, lora_embedding_B): axis 1, (out, r / groups, ...)
A grouped convolution's B reads A's channels in `groups` blocks of r / groups, so a smaller A goes into the
bigger one block by block (each block's leading rows), and a smaller B into each output's leading columns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .layer import LoraLayer

_RESIZED_ATTRS = {0: ("out_features", "out_channels"), 1: ("in_features", "in_channels")}
_RANK_AXIS = {("lora_A", "weight"): 0, ("lora_embedding_A", None): 0,
              ("lora_B", "weight"): 1, ("lora_embedding_B", None): 1}


@dataclass
class Slot:
    """One tensor of one adapter: `owner._parameters[name]` (owner: the factor module, or the ParameterDict)."""
    key: str
    layer_path: str
    layer: LoraLayer
    container: str
    param_name: Optional[str]       # None: the container holds the Parameter itself (embedding factors)
    owner: nn.Module
    name: str

    @property
    def tensor(self) -> nn.Parameter:
        return self.owner._parameters[self.name]

    @property
    def rank_axis(self) -> Optional[int]:
        """0 for an A factor's weight, 1 for a B factor's, None for what has no rank (bias, DoRA magnitude)."""
        return _RANK_AXIS.get((self.container, self.param_name))

    def groups(self) -> int:
        """The grouped-convolution blocks of the rank (1 everywhere but a grouped conv's factors)."""
        if self.container not in ("lora_A", "lora_B"):
            return 1
        return getattr(self.layer.get_base_layer(), "groups", 1)

    def rank_of(self, shape) -> int:
        """The rank a tensor of this shape holds in this slot (B of a grouped conv: r / groups per block)."""
        size = shape[self.rank_axis]
        return size * self.groups() if self.rank_axis == 1 else size


def is_compiled(model: nn.Module) -> bool:
    """torch.compile(model) wraps it (`_orig_mod`); model.compile() compiles it in place."""
    return hasattr(model, "_orig_mod") or bool(getattr(model, "_compiled_call_impl", None))


def unwrap_compiled(model: nn.Module) -> nn.Module:
    inner = getattr(model, "_orig_mod", model)
    return inner if isinstance(inner, nn.Module) else model


def lora_layers(model: nn.Module) -> list[tuple[str, LoraLayer]]:
    return [(path, m) for path, m in unwrap_compiled(model).named_modules() if isinstance(m, LoraLayer)]


def adapter_slots(model: nn.Module, adapter_name: str, prefix: str = "lora_") -> dict[str, Slot]:
    """{state-dict key: Slot} of every tensor adapter `adapter_name` has on the LoRA layers of `model` (keys
    relative to the uncompiled model), from containers whose name holds `prefix`."""
    slots: dict[str, Slot] = {}
    for path, layer in lora_layers(model):
        for container, holder in layer.adapter_containers():
            if prefix not in container or adapter_name not in holder:
                continue
            base_key = f"{path}.{container}.{adapter_name}" if path else f"{container}.{adapter_name}"
            if isinstance(holder, nn.ParameterDict):
                slots[base_key] = Slot(base_key, path, layer, container, None, holder, adapter_name)
                continue
            for sub, module in holder[adapter_name].named_modules():
                for pname, param in module._parameters.items():
                    if param is None:
                        continue
                    key = ".".join(p for p in (base_key, sub, pname) if p)
                    slots[key] = Slot(key, path, layer, container, pname if not sub else f"{sub}.{pname}",
                                      module, pname)
    return slots


def saved_base_slots(model: nn.Module, keys) -> dict[str, Slot]:
    """Slots for `<layer>.base_layer.weight` keys: PEFT saves the full weight of an adapted embedding / lm_head
    (a resized vocabulary) and loading puts it into the base layer; a swap copies it in place the same way."""
    inner, slots = unwrap_compiled(model), {}
    for key in keys:
        path = key.removesuffix(".base_layer.weight")
        if path == key:
            continue
        try:
            layer = inner.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layer, LoraLayer) and isinstance(getattr(layer.get_base_layer(), "weight", None), nn.Parameter):
            slots[key] = Slot(key, path, layer, "base_layer", "weight", layer.get_base_layer(), "weight")
    return slots


def adapter_rank(layer: LoraLayer, adapter_name: str) -> Optional[int]:
    """The rank adapter `adapter_name`'s factors have on `layer` now (padding included); None without factors."""
    for container in ("lora_A", "lora_embedding_A"):
        holder = layer._modules.get(container)
        if holder is not None and adapter_name in holder:
            value = holder[adapter_name]
            return (value if isinstance(value, torch.Tensor) else value.weight).shape[0]
    return None


def place_rank(dest: torch.Tensor, src: torch.Tensor, axis: int, groups: int = 1) -> None:
    """dest (bigger rank) := src (smaller rank) in its leading rank slice, zeros elsewhere; in place, no grad."""
    with torch.no_grad():
        dest.zero_()
        src = src.to(device=dest.device, dtype=dest.dtype)
        if axis == 1:
            dest[:, : src.shape[1]].copy_(src)
        elif groups == 1:
            dest[: src.shape[0]].copy_(src)
        else:   # a grouped conv's A: each block of r / groups rows into the leading rows of its bigger block
            big, small = dest.shape[0] // groups, src.shape[0] // groups
            for g in range(groups):
                dest[g * big: g * big + small].copy_(src[g * small: (g + 1) * small])


def padded(param: torch.Tensor, target_rank: int, axis: int, groups: int = 1) -> nn.Parameter:
    """A new Parameter holding `param` zero-padded to `target_rank` along its rank axis (requires_grad kept)."""
    shape = list(param.shape)
    shape[axis] = target_rank // groups if axis == 1 else target_rank
    out = torch.zeros(shape, device=param.device, dtype=param.dtype)
    place_rank(out, param.detach(), axis, groups)
    return nn.Parameter(out, requires_grad=param.requires_grad)


def set_rank_attrs(slot: Slot, rank: int) -> None:
    """After a factor's rank changed: nn.Linear / nn.ConvNd's size attributes follow the weight."""
    for attr in _RESIZED_ATTRS[slot.rank_axis]:
        if attr in slot.owner.__dict__:
            slot.owner.__dict__[attr] = rank
