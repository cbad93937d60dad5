"""prepare_model_for_compiled_hotswap (PEFT's peft.utils.hotswap): make a LoRA model swappable under torch.compile.

torch.compile guards on Python floats by value and on tensors by shape, so before compiling:
  * each LoRA scaling (alpha / r) becomes a 0-dim tensor: a swap that changes alpha or r fills it in place;
  * with target_rank, every LoRA A / B is zero-padded to that rank: B[:, r:] = 0 and A[r:] = 0 add nothing,
        B_pad @ A_pad = B @ A,   so outputs are unchanged,
    and an adapter of any rank <= target_rank then fits the same tensors (hotswap.py copies it in).
As PEFT, the layers' `r` and `lora_alpha` keep the loaded adapter's values (the scaling is what the forward reads);
only the configs passed in record target_rank (`r`, and every rank_pattern value).

Everything is checked before anything changes: a refused call leaves the model as it was.
"""
from __future__ import annotations

import warnings
from typing import Literal, Optional, Union

import torch
from torch import nn

from ...config.base import PeftConfig
from .hotswap_slots import (
    adapter_rank,
    adapter_slots,
    is_compiled,
    lora_layers,
    padded,
    set_rank_attrs,
)
from .layer import LoraLayer

_CHECK_COMPILED = ("error", "warn", "ignore")


def prepare_model_for_compiled_hotswap(
    model: nn.Module,
    *,
    target_rank: Optional[int] = None,
    config: Optional[Union[PeftConfig, dict[str, PeftConfig]]] = None,
    check_compiled: Literal["error", "warn", "ignore"] = "error",
) -> None:
    """Prepare a model with its first LoRA adapter loaded for hot-swapping after torch.compile (call it before
    compiling): scalings become tensors; with `target_rank` (the largest rank of the adapters to come) every
    LoRA A / B is zero-padded to it; `config` (a LoraConfig or {name: LoraConfig}) gets r = target_rank."""
    if check_compiled not in _CHECK_COMPILED:
        raise ValueError(f"check_compiles should be one of 'error', 'warn', or 'ignore', got '{check_compiled}' "
                         f"instead.")
    if is_compiled(model):
        if check_compiled == "error":
            raise ValueError("Call prepare_model_for_compiled_hotswap *before* compiling the model")
        if check_compiled == "warn":
            warnings.warn("prepare_model_for_compiled_hotswap was called with a model that is already compiled. "
                          "This will likely result in re-compilation, hurting performance. Call the function "
                          "before compiling the model.")
    if target_rank is not None and (isinstance(target_rank, bool) or not isinstance(target_rank, int)
                                    or target_rank < 1):
        raise ValueError(f"target_rank = {target_rank!r} is invalid: pass a positive int (the largest rank among "
                         f"the LoRA adapters you will hot-swap in), or None to keep the ranks")
    configs = _configs(config)
    layers = lora_layers(model)
    if not layers:
        raise ValueError("No adapter layers found on the model, make sure call `prepare_model_for_compiled_hotswap` "
                         "after loading the first adapter and before loading the second adapter.")
    for path, layer in layers:
        _check_scalings(path, layer)
        if target_rank is not None:
            _check_padding(path, layer, target_rank)
    # -- checked: now change the model --------------------------------------------------------------------
    for _, layer in layers:
        _scalings_to_tensors(layer)
    if target_rank is not None:
        for slot in _slots_to_pad(model, layers, target_rank):
            _pad(slot, target_rank)
        for lora_config in configs:
            lora_config.r = target_rank
            for key in lora_config.rank_pattern or {}:
                lora_config.rank_pattern[key] = target_rank


def _configs(config) -> list:
    if not config:
        return []
    values = list(config.values()) if isinstance(config, dict) else [config]
    for value in values:
        if not (hasattr(value, "r") and hasattr(value, "rank_pattern")):
            raise TypeError(f"config: expected a LoraConfig or a dict of LoraConfigs (e.g. model.peft_config), got "
                            f"{type(value).__name__}")
    return values


def _check_scalings(path: str, layer: LoraLayer) -> None:
    for name, value in layer.scaling.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
            raise TypeError(f"{path}: the scaling of adapter {name!r} is a {type(value).__name__}; expected a float "
                            f"(alpha / r) or a tensor")


def _factor_device(layer: LoraLayer, name: str) -> torch.device:
    """Where adapter `name`'s factors (hence its forward) live: the scaling tensor goes there too."""
    for container, holder in layer.adapter_containers():
        if name in holder:
            value = holder[name]
            tensor = value if isinstance(value, torch.Tensor) else next(value.parameters(), None)
            if tensor is not None:
                return tensor.device
    return next(layer.get_base_layer().parameters()).device


def _scalings_to_tensors(layer: LoraLayer) -> None:
    for name, value in list(layer.scaling.items()):
        if not isinstance(value, torch.Tensor):   # default dtype, as PEFT: a 0-dim tensor never promotes
            layer.scaling[name] = torch.tensor(float(value), device=_factor_device(layer, name))


def _check_padding(path: str, layer: LoraLayer, target_rank: int) -> None:
    groups = getattr(layer.get_base_layer(), "groups", 1)
    if groups > 1 and target_rank % groups != 0:
        kind = type(layer.get_base_layer()).__name__
        raise ValueError(f"Trying to pad a {kind} LoRA adapter with groups={groups} to target rank {target_rank}, "
                         f"but the target rank is not divisible by {groups}. Please choose a target rank that is "
                         f"divisible by {groups}.")
    for name in layer.adapter_names():
        rank = adapter_rank(layer, name)
        if rank is not None and rank > target_rank:
            raise ValueError(f"Trying to pad the adapter to the target rank {target_rank}, but the original rank is "
                             f"larger ({rank}). This is not possible. (layer {path!r}, adapter {name!r}: pass a "
                             f"target_rank of at least the largest rank you will hot-swap in)")


def _slots_to_pad(model: nn.Module, layers, target_rank: int) -> list:
    """The A / B tensors of every adapter whose rank is below target_rank (decided before any is padded)."""
    names = dict.fromkeys(name for _, layer in layers for name in layer.adapter_names())
    out = []
    for name in names:
        for slot in adapter_slots(model, name).values():
            if slot.rank_axis is not None and adapter_rank(slot.layer, name) not in (None, target_rank):
                out.append(slot)
    return out


def _pad(slot, target_rank: int) -> None:
    """Zero-pad one factor to target_rank: a new Parameter in the same module (requires_grad kept)."""
    slot.owner._parameters[slot.name] = padded(slot.tensor, target_rank, slot.rank_axis, slot.groups())
    set_rank_attrs(slot, target_rank)
