"""Hot-swapping LoRA adapters (PEFT's peft.utils.hotswap): new weights into a loaded adapter, in place.

    hotswap_adapter(model, path, "default")      load a saved PEFT-format LoRA adapter and swap it in
    hotswap_adapter_from_state_dict(...)          the same from a state dict with model keys (adapter name in)

The adapter keeps its name, modules and parameters: each tensor is copied into the one already there, so a
torch.compile'd model sees the same inputs and does not recompile. The layer's scaling becomes the new adapter's
alpha / r (filled in place when prepare_model_for_compiled_hotswap made it a tensor). A tensor the new adapter
lacks (a layer it does not target) is zeroed, so that layer adds nothing; a key the model has no slot for (a
layer the new adapter targets and the old one does not) is refused: layers cannot be added without
re-injecting. A smaller rank goes into the leading rows / columns of a bigger (padded) slot, the rest zero:
    B' A' = [B 0] [A; 0] = B A.
A bigger rank grows the tensors (as PEFT) only in an uncompiled, unprepared model; otherwise it is refused.
Everything is checked before anything is written: a refused swap leaves the model as it was.

As PEFT, the layers' `r` / `lora_alpha` (and surgery's initial_scaling, which set_scale reads as PEFT reads
alpha / r) and model.peft_config keep the first adapter's values. Unlike PEFT 0.21.2,
rank_pattern / alpha_pattern are matched against the module path (as when loading: PEFT matches the parameter
key, where a plain module-name pattern never matches), DoRA magnitudes and embedding factors swap too (PEFT
raises a KeyError / AttributeError), and a missing DoRA magnitude is reset to the base's row norms (W' = W).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ...checkpoint.io import read_config_dict, read_tensors, resolve_adapter_files
from ...config.base import PeftConfig
from ...config.enums import PeftType
from ...config.loading import config_from_dict
from ...errors import AdapterNameError
from ...matching.selectors import pattern_value
from .hotswap_slots import (
    Slot,
    adapter_slots,
    is_compiled,
    place_rank,
    saved_base_slots,
    set_rank_attrs,
    unwrap_compiled,
)
from .layer import LoraLayer
from .mha import OutProj

# config keys that change the output beyond the state dict, and that a swap cannot change (as PEFT)
CONFIG_KEYS_TO_CHECK = {PeftType.LORA: ["use_rslora", "lora_dropout", "alpha_pattern", "use_dora"]}
_HUB_KEYS = ("subfolder", "revision", "cache_dir", "token", "force_download", "local_files_only")
_COLLAPSED = ("lora_magnitude_vector",)   # saved without its `.weight` (PEFT's DoRA key)


def check_hotswap_configs_compatible(config0: PeftConfig, config1: PeftConfig) -> None:
    """Raise ValueError unless an adapter with config1 can be swapped into one loaded with config0."""
    if config0.peft_type != config1.peft_type:
        raise ValueError(f"Incompatible PEFT types found: {config0.peft_type.value} and {config1.peft_type.value}")
    if config0.peft_type not in CONFIG_KEYS_TO_CHECK:
        supported = ", ".join(PeftType(t).value for t in CONFIG_KEYS_TO_CHECK)
        raise ValueError(f"Hotswapping only supports {supported} but {config0.peft_type.value} was passed.")
    dict0, dict1 = config0.to_dict(), config1.to_dict()
    missing = object()
    for key in CONFIG_KEYS_TO_CHECK[config0.peft_type]:
        val0, val1 = dict0.get(key, missing), dict1.get(key, missing)
        if val0 != val1:
            raise ValueError(f"Configs are incompatible: for {key}, {val0} != {val1}")


def hotswap_adapter(model: nn.Module, model_name_or_path: str, adapter_name: str,
                    torch_device: Optional[str] = None, **kwargs) -> None:
    """Replace the weights (and scaling) of loaded adapter `adapter_name` by the saved adapter at
    `model_name_or_path` (a directory or Hub id; hub keywords: subfolder, revision, token, cache_dir, ...)."""
    unknown = sorted(set(kwargs) - set(_HUB_KEYS) - {"use_auth_token"})
    if unknown:
        raise TypeError(f"hotswap_adapter got unexpected keyword argument(s) {unknown}; it takes "
                        f"{', '.join(_HUB_KEYS + ('use_auth_token',))}")
    hub = {k: v for k, v in kwargs.items() if k in _HUB_KEYS}
    if kwargs.get("use_auth_token") is not None and hub.get("token") is None:
        hub["token"] = kwargs["use_auth_token"]
    loaded = _loaded_config(model, adapter_name)
    directory = resolve_adapter_files(model_name_or_path, **hub)
    config = config_from_dict(read_config_dict(directory), strict=False,
                              where=str(directory / "adapter_config.json"))
    check_hotswap_configs_compatible(loaded, config)
    tensors = read_tensors(directory, device=str(torch_device) if torch_device is not None else "cpu")
    hotswap_adapter_from_state_dict(model, with_adapter_name(tensors, adapter_name), adapter_name, config,
                                    parameter_prefix="lora_")


def _loaded_config(model: nn.Module, adapter_name: str) -> PeftConfig:
    peft_config = getattr(model, "peft_config", None)
    if not isinstance(peft_config, dict):
        raise TypeError(f"hotswap_adapter needs a PeftModel with adapter {adapter_name!r} loaded (e.g. from "
                        f"PeftModel.from_pretrained), got a {type(model).__name__}")
    if adapter_name not in peft_config:
        raise AdapterNameError(f"adapter_name = {adapter_name!r} is not loaded on this model (its adapters: "
                               f"{list(peft_config)}); hot-swapping replaces a loaded adapter's weights")
    return peft_config[adapter_name]


def with_adapter_name(state_dict: dict[str, torch.Tensor], adapter_name: str) -> dict[str, torch.Tensor]:
    """Checkpoint keys -> model keys: the adapter name after the LoRA container (`lora_A.weight` ->
    `lora_A.<name>.weight`, `lora_embedding_A` -> `lora_embedding_A.<name>`, `lora_magnitude_vector` ->
    `lora_magnitude_vector.<name>.weight`). Keys without a LoRA container stay as they are."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        at = max((i for i, p in enumerate(parts) if p in LoraLayer.adapter_layer_names), default=None)
        if at is not None:
            tail = ["weight"] if at == len(parts) - 1 and parts[at] in _COLLAPSED else []
            parts = parts[: at + 1] + [adapter_name] + parts[at + 1:] + tail
        out[".".join(parts)] = value
    return out


def hotswap_adapter_from_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str,
                                    config: PeftConfig, parameter_prefix: str = "lora_") -> None:
    """Swap the tensors of `state_dict` (model keys, e.g. `base_model.model.x.lora_A.default.weight`) into
    adapter `adapter_name` in place; `config` (the new adapter's LoraConfig) gives the scalings."""
    if getattr(config, "peft_type", None) != PeftType.LORA:
        raise ValueError(f"config: expected the new adapter's LoraConfig, got {type(config).__name__}"
                         f"{f' ({config.peft_type.value})' if hasattr(config, 'peft_type') else ''}; only LoRA "
                         f"adapters can be hot-swapped")
    inner = unwrap_compiled(model)
    growable = not is_compiled(model)
    merged = [path for path, m in inner.named_modules()
              if adapter_name in getattr(m, "merged_adapters", ()) and getattr(m, "_surgery_adapter_layer", False)]
    if merged:
        raise ValueError(f"Cannot hot-swap adapter '{adapter_name}' because it is currently merged into the base "
                         f"weights. Please unmerge the adapter first by calling `peft_model.unmerge_adapter()` (or, "
                         f"for diffusers models, `diffusers_model.unfuse_lora()`); unmerging after a swap of merged "
                         f"weights would otherwise corrupt them. (merged in: {merged[0]!r})")
    slots = adapter_slots(inner, adapter_name, parameter_prefix)
    if not slots:
        raise AdapterNameError(f"adapter_name = {adapter_name!r} has no LoRA tensors on this model; hot-swapping "
                               f"replaces the weights of a loaded LoRA adapter")
    state = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    missing = [slot for key, slot in slots.items() if key not in state]
    slots.update(saved_base_slots(inner, state))   # a saved embedding weight: copied in place, as loading does
    unexpected = [k for k in state if k not in slots]
    if unexpected:
        raise RuntimeError(f"Hot swapping the adapter did not succeed, unexpected keys found: "
                           f"{', '.join(unexpected)}. The loaded adapter {adapter_name!r} has no such tensors: the "
                           f"new adapter targets modules (or has parts) the loaded one does not, and hot-swapping "
                           f"cannot add layers; load it with load_adapter instead, or hot-swap into an adapter "
                           f"that targets a superset of its modules.")
    plan = [_action(slots[k], v, growable, adapter_name) for k, v in state.items()]
    touched = {id(slots[k].layer): slots[k] for k in state}
    _check_ranks(slots, state)
    scalings = {layer_id: _scaling(slot, config) for layer_id, slot in touched.items()}
    # -- checked: now write ---------------------------------------------------------------------------------
    with torch.no_grad():
        for slot in missing:
            if slot.container not in _COLLAPSED:
                slot.tensor.zero_()   # in place (bumps the version: cached mixed-batch stacks see it)
        for slot, value, how in plan:
            _write(slot, value, how)
        for layer_id, slot in touched.items():
            _set_scaling(slot.layer, adapter_name, scalings[layer_id])
        for slot in missing:
            if slot.container in _COLLAPSED:   # DoRA magnitude: ||W + s B A|| (= ||W|| with zeroed factors)
                norm = slot.layer.lora_magnitude_vector[adapter_name].row_norm(
                    slot.layer, adapter_name, slot.layer.dense_base_weight())
                slot.tensor.copy_(norm.reshape(slot.tensor.shape))


def _action(slot: Slot, value, growable: bool, adapter_name: str) -> tuple[Slot, torch.Tensor, str]:
    """How `value` goes into `slot`: "copy" (same shape), "place" (smaller rank), "grow" (bigger rank)."""
    old = slot.tensor
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"{slot.key}: the new adapter holds {kind}; expected a floating-point tensor ({old.dtype})")
    if value.shape == old.shape:
        return slot, value, "copy"
    axis = slot.rank_axis
    same_elsewhere = value.dim() == old.dim() and axis is not None and all(
        a == b for i, (a, b) in enumerate(zip(old.shape, value.shape)) if i != axis)
    if not same_elsewhere:
        raise ValueError(f"Incompatible shapes found for LoRA weights {slot.key}: {tuple(old.shape)} vs "
                         f"{tuple(value.shape)}. Only the rank may differ between hot-swapped adapters (the new one "
                         f"was saved for another base model or layer); please ensure that all ranks are padded to "
                         f"the largest rank among all LoRA adapters by using prepare_model_for_compiled_hotswap.")
    if value.shape[axis] < old.shape[axis]:
        return slot, value, "place"
    if not growable or isinstance(slot.layer.scaling.get(adapter_name), torch.Tensor):
        raise ValueError(f"{slot.key}: the new adapter's rank {slot.rank_of(value.shape)} is larger than the "
                         f"rank {slot.rank_of(old.shape)} this model holds (its target_rank); growing a tensor of a "
                         f"model prepared for compiled hot-swapping (or compiled) would recompile it. Call "
                         f"prepare_model_for_compiled_hotswap(model, target_rank=...) with the largest rank among "
                         f"all adapters you will swap in, before compiling")
    return slot, value, "grow"


def _check_ranks(slots: dict[str, Slot], state: dict) -> None:
    """The new A and B of each layer must agree on the rank (a grouped conv's rank must split into its groups),
    and a layer that grows must get all of its factors."""
    ranks: dict[int, dict[str, int]] = {}
    for key, value in state.items():
        slot = slots[key]
        if slot.rank_axis is None:
            continue
        rank = slot.rank_of(value.shape)
        if slot.container == "lora_A" and rank % slot.groups():
            raise ValueError(f"{key}: rank {rank} is not a multiple of the grouped convolution's groups "
                             f"({slot.groups()}); the new adapter does not fit this layer")
        ranks.setdefault(id(slot.layer), {})[key] = rank
    for found in ranks.values():
        if len(set(found.values())) > 1:
            raise ValueError(f"the new adapter's factors disagree on the rank: "
                             f"{', '.join(f'{k}: {r}' for k, r in found.items())}")
    for key, slot in slots.items():
        if slot.rank_axis is None or key in state:
            continue
        grown = [k for k, r in ranks.get(id(slot.layer), {}).items() if r > slot.rank_of(slot.tensor.shape)]
        if grown:
            raise ValueError(f"{grown[0]} has a larger rank than the loaded adapter but the new adapter lacks "
                             f"{key}, which would be left at the old rank; the new adapter is incomplete")


def _layer_fqn(slot: Slot) -> str:
    """The module path rank_pattern / alpha_pattern are matched against (as when the adapter was loaded)."""
    fqn = slot.layer.__dict__.get("_surgery_fqn") or slot.layer_path.removeprefix("base_model.model.")
    # MultiheadAttention's out_proj half shares its owner's rank and alpha
    return fqn.removesuffix(".base_layer.out_proj") if isinstance(slot.layer, OutProj) else fqn


def _scaling(slot: Slot, config) -> float:
    fqn = _layer_fqn(slot)
    r = pattern_value(config.rank_pattern, fqn, config.r)
    alpha = pattern_value(config.alpha_pattern, fqn, config.lora_alpha)
    if not r or r <= 0:
        raise ValueError(f"the new adapter's config gives {fqn!r} rank r={r!r}; expected a positive int")
    return alpha / math.sqrt(r) if config.use_rslora else alpha / r


def _set_scaling(layer: LoraLayer, adapter_name: str, value: float) -> None:
    current = layer.scaling.get(adapter_name)
    if isinstance(current, torch.Tensor):
        current.fill_(value)   # the same tensor: a compiled graph reads the new value without recompiling
    else:
        layer.scaling[adapter_name] = value


def _write(slot: Slot, value: torch.Tensor, how: str) -> None:
    old = slot.tensor
    if how == "copy":
        old.copy_(value)   # not .data.copy_: copy_ bumps the version, which the mixed-batch cache reads
    elif how == "place":
        place_rank(old, value, slot.rank_axis, slot.groups())
    else:   # grow (uncompiled, unprepared model, as PEFT): the same Parameter object with new storage
        old.data = value.to(device=old.device, dtype=old.dtype).clone()
        set_rank_attrs(slot, slot.rank_of(value.shape))
