"""PEFT's functional API (`peft.functional`): adapters on a plain model, without a PeftModel.

What integrations (transformers' adapter mixin, diffusers) call after `inject_adapter_in_model`: the model keeps
its own class, its adapter layers do the work, and these functions walk them. Each checks its arguments against
every layer before it changes any.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

from torch import nn

from .api import inject_adapter_in_model
from .checkpoint.state import get_peft_model_state_dict, set_peft_model_state_dict
from .errors import AdapterNameError, PeftWarning
from .methods.base_layer import AdapterLayer
from .rewrite.dtypes import upcast_adapter
from .rewrite.modules_to_save import check_one_copy_each
from .rewrite.trainable import adapter_layers, set_adapters_requires_grad


def _layers(model: nn.Module, layer_cls: Optional[type]) -> list[tuple[str, nn.Module]]:
    """The adapter layers `layer_cls` selects (None or the base class: all), modules_to_save copies included
    (PEFT handles those 'auxiliary' wrappers beside the layers in every one of these calls)."""
    return [(fqn, layer) for fqn, layer in adapter_layers(model)
            if layer_cls in (None, AdapterLayer) or isinstance(layer, layer_cls)
            or getattr(layer, "_surgery_modules_to_save", False)]


def _names(adapter_names: Union[str, Sequence[str]]) -> list[str]:
    return [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)


def _check_known(layers, names: list[str], call: str) -> None:
    known = {n for _, layer in layers for n in layer._all_available_adapter_names()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise AdapterNameError(f"{call}: adapter(s) {unknown} are on no layer of this model; its adapters: "
                               f"{sorted(known) or 'none (inject one with inject_adapter_in_model)'}")


def set_adapter(model: nn.Module, adapter_name: Union[str, list[str]], inference_mode: bool = False,
                layer_cls: Optional[type] = None) -> None:
    """Make these adapters the active ones on every layer; they train unless inference_mode (the others are
    frozen). A merged layer is unmerged first, with PEFT's warning."""
    layers = _layers(model, layer_cls)
    names = _names(adapter_name)
    _check_known(layers, names, "set_adapter")
    check_one_copy_each(layers, names)
    for _, layer in layers:
        if layer.merged:
            warnings.warn("Adapter cannot be set when the model is merged. Unmerging the model first.", PeftWarning,
                          stacklevel=2)
            layer.unmerge()
        layer.set_adapter(names, trainable=not inference_mode)


def delete_adapter(model: nn.Module, adapter_name: str, prefix: Optional[str] = None,
                   layer_cls: Optional[type] = None) -> Optional[list[str]]:
    """Remove adapter `adapter_name`'s parameters and buffers from every layer (merged layers are unmerged
    first). Returns the adapters left active (the first layer's), or None when no layer had it. `prefix` is
    PEFT's parameter prefix ("lora_"); surgery knows its layers by class and does not need it.

    As PEFT, the layers stay wrapped even when empty (the PeftModel's delete_adapter unwraps them)."""
    layers = [(fqn, layer) for fqn, layer in _layers(model, layer_cls)
              if adapter_name in layer._all_available_adapter_names()]
    if not layers:
        _check_known(_layers(model, layer_cls), [adapter_name], "delete_adapter")
    remaining = None
    for _, layer in layers:
        layer.delete_adapter(adapter_name)
        if remaining is None:
            remaining = list(layer.active_adapters)
    return remaining


def set_requires_grad(model: nn.Module, adapter_names: Union[str, Sequence[str]], requires_grad: bool = True) -> None:
    """Turn gradients on or off for these adapters' parameters, wherever they are."""
    names = _names(adapter_names)
    _check_known(_layers(model, None), names, "set_requires_grad")
    set_adapters_requires_grad(model, set(names), requires_grad)


def cast_adapter_dtype(model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
    """Upcast adapter `adapter_name`'s half-precision (and float8) parameters to float32, as a PeftModel does
    on creation; new Parameter objects replace the old ones (requires_grad kept)."""
    if autocast_adapter_dtype:
        upcast_adapter(model, adapter_name)


__all__ = ["cast_adapter_dtype", "delete_adapter", "get_peft_model_state_dict", "inject_adapter_in_model",
           "set_adapter", "set_peft_model_state_dict", "set_requires_grad"]
