"""get_layer_status / get_model_status: PEFT's per-layer and per-model adapter reports, field for field.

A model-wide field reads "irregular" when its layers disagree (some enabled, some not; different active
adapters): the model is then in a state no single call put it in, which is worth seeing before training.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
from torch import nn

from ..errors import SurgeryError
from ..quantized import stored_numel
from ..rewrite.trainable import adapter_layers

Irregular = Literal["irregular"]


@dataclass
class TunerLayerStatus:
    name: str
    module_type: str
    enabled: bool
    active_adapters: list[str]
    merged_adapters: list[str]
    requires_grad: dict[str, Union[bool, Irregular]]
    available_adapters: list[str]
    devices: dict[str, list[str]]
    quantization_backend: Optional[str]


@dataclass
class TunerModelStatus:
    base_model_type: str
    adapter_model_type: str
    peft_types: dict[str, str]
    trainable_params: int
    total_params: int
    num_adapter_layers: int
    enabled: Union[bool, Irregular]
    active_adapters: Union[list[str], Irregular]
    merged_adapters: Union[list[str], Irregular]
    requires_grad: dict[str, Union[bool, Irregular]]
    available_adapters: list[str]
    devices: dict[str, list[str]]
    quantization_backend: Union[str, None, Irregular]


def _agreement(values) -> Union[bool, Irregular]:
    values = list(values)
    if all(v is True for v in values):
        return True
    if all(v is False for v in values):
        return False
    return "irregular"


def _per_adapter_tensors(layer: nn.Module):
    """(adapter name, tensor) for each parameter or buffer an adapter holds on this layer."""
    if getattr(layer, "_surgery_modules_to_save", False):
        holders = [layer.modules_to_save]
    else:
        holders = [holder for _, holder in layer.adapter_containers()]
    for holder in holders:
        for key in holder.keys():
            value = holder[key]
            if isinstance(value, torch.Tensor):
                yield key, value
            else:
                for tensor in list(value.parameters()) + list(value.buffers()):
                    yield key, tensor


def _layer_status(name: str, layer: nn.Module) -> TunerLayerStatus:
    grads, devices = collections.defaultdict(list), collections.defaultdict(set)
    for adapter, tensor in _per_adapter_tensors(layer):
        if isinstance(tensor, nn.Parameter):
            grads[adapter].append(tensor.requires_grad)
        devices[adapter].add(tensor.device.type)
    backend = getattr(layer, "quantization_backend", None)
    return TunerLayerStatus(
        name=name, module_type=repr(layer).partition("(")[0], enabled=not layer._disable_adapters,
        active_adapters=list(layer.active_adapters), merged_adapters=list(layer.merged_adapters),
        requires_grad={k: _agreement(v) for k, v in grads.items()}, available_adapters=sorted(layer.adapter_names()),
        devices={k: sorted(v) for k, v in devices.items()},
        quantization_backend=getattr(backend, "backend_name", backend))


def _reported(name: str, layer: nn.Module) -> tuple[str, nn.Module]:
    """A wrapper whose class names a `reported_layer` inside it is reported as that layer (PEFT lists the layer)."""
    inner = getattr(type(layer), "reported_layer", None)
    return (f"{name}.{inner}", layer.get_submodule(inner)) if inner else (name, layer)


def _is_peft_model(model: nn.Module) -> bool:
    # Duck-typed, so this module does not import the façade that offers these reports as methods.
    return hasattr(model, "_injected_states") and isinstance(getattr(model, "peft_config", None), dict)


def _tuner_of(model: nn.Module, what: str) -> nn.Module:
    if not _is_peft_model(model):
        return model
    if model._injected_states() and not any(True for _ in adapter_layers(model.base_model)):
        raise TypeError(f"{what}() got a PeftModel whose adapters add inputs, not layers (prompt learning): "
                        f"it has no adapter layers to report")
    return model.base_model


def get_layer_status(model: nn.Module) -> list[TunerLayerStatus]:
    """One TunerLayerStatus per adapter layer (and modules_to_save copy) of a PeftModel or injected model."""
    root = _tuner_of(model, "get_layer_status")
    found = [_layer_status(*_reported(name, layer)) for name, layer in adapter_layers(root)]
    if not found:
        raise SurgeryError("get_layer_status: no adapter layers found in the model; pass a PeftModel or a model "
                           "with adapters injected (inject_adapter_in_model)")
    return found


def get_model_status(model: nn.Module) -> TunerModelStatus:
    """The model-wide summary of get_layer_status, with "irregular" where layers disagree."""
    layers = get_layer_status(model)
    params = list(model.parameters())
    trainable = sum(stored_numel(p) for p in params if p.requires_grad)
    total = sum(stored_numel(p) for p in params)
    if _is_peft_model(model):
        base_type, adapter_type = type(model.get_base_model()).__name__, type(model.base_model).__name__
        peft_types = {k: c.peft_type.value for k, c in model.peft_config.items()}
    else:
        from transformers import PreTrainedModel

        base_type = type(model).__name__ if isinstance(model, PreTrainedModel) else "other"
        adapter_type, peft_types = "None", {}
    enabled = {s.enabled for s in layers}
    active = {tuple(s.active_adapters) for s in layers}
    merged = sorted(set().union(*(s.merged_adapters for s in layers)))
    if any(set(merged) & (set(s.available_adapters) - set(s.merged_adapters)) for s in layers):
        merged = "irregular"
    grads, devices = collections.defaultdict(list), collections.defaultdict(set)
    for s in layers:
        for key, value in s.requires_grad.items():
            grads[key].append(value)
        for key, value in s.devices.items():
            devices[key].update(value)
    backends = {s.quantization_backend for s in layers}
    return TunerModelStatus(
        base_model_type=base_type, adapter_model_type=adapter_type, peft_types=peft_types,
        trainable_params=trainable, total_params=total, num_adapter_layers=len(layers),
        enabled=enabled.pop() if len(enabled) == 1 else "irregular",
        active_adapters=list(active.pop()) if len(active) == 1 else "irregular",
        merged_adapters=merged, requires_grad={k: _agreement(v) for k, v in grads.items()},
        available_adapters=sorted(set().union(*(s.available_adapters for s in layers))),
        devices={k: sorted(v) for k, v in devices.items()},
        quantization_backend=backends.pop() if len(backends) == 1 else "irregular")
