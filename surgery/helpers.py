"""PEFT's `peft.helpers`: signatures for wrapped models, a Hub check, and two context managers.

    update_forward_signature / update_generate_signature / update_signature   the PeftModel's forward/generate
        show the base model's parameters (inspect.signature, IDEs, and code that filters keyword arguments by it)
    check_if_peft_model(path_or_id)      whether an adapter_config.json is found there
    rescale_adapter_scale(model, m)      LoRA scalings times m inside a `with` block
    disable_input_dtype_casting(model)   adapter layers leave inputs in their dtype inside the block
    DoraCaching                          DoRA's row norms cached in eval mode
"""
from __future__ import annotations

import functools
import types
from contextlib import contextmanager

from torch import nn

from .config.base import PeftConfig
from .methods.base_layer import AdapterLayer
from .methods.lora import dora as _dora
from .methods.lora.rescale import rescale_adapter_scale

# PEFT replaces only a generic (*args, **kwargs) signature; surgery's PeftModel.forward also names adapter_names
_GENERIC = ({"args", "kwargs"}, {"args", "adapter_names", "kwargs"})


def _rebound_with_signature_of(model, attribute: str, source) -> None:
    """model.<attribute> replaced by a copy of its function that reports `source`'s signature and doc (only
    when its signature is the generic one, as PEFT)."""
    import inspect

    bound = getattr(model, attribute)
    if set(inspect.signature(bound).parameters) not in _GENERIC:
        return
    func = bound.__func__
    copy = types.FunctionType(func.__code__, func.__globals__, func.__name__, func.__defaults__, func.__closure__)
    copy.__kwdefaults__ = func.__kwdefaults__
    functools.update_wrapper(copy, source, assigned=("__doc__", "__name__", "__annotations__"))
    setattr(model, attribute, types.MethodType(copy, model))


def update_forward_signature(model) -> None:
    _rebound_with_signature_of(model, "forward", type(model.get_base_model()).forward)


def update_generate_signature(model) -> None:
    if not hasattr(model, "generate"):
        return
    _rebound_with_signature_of(model, "generate", type(model.get_base_model()).generate)


def update_signature(model, method: str = "all") -> None:
    if method == "forward":
        update_forward_signature(model)
    elif method == "generate":
        update_generate_signature(model)
    elif method == "all":
        update_forward_signature(model)
        update_generate_signature(model)
    else:
        raise ValueError(f"method {method} is not supported please choose one of ['forward', 'generate', 'all']")


def check_if_peft_model(model_name_or_path: str) -> bool:
    """True when an adapter config loads from there (a directory, or a Hub id / its cache); any failure: False."""
    try:
        PeftConfig.from_pretrained(model_name_or_path)
    except Exception:
        return False
    return True


class DoraCaching:
    """DoRA's row norms kept between forwards in eval mode (faster inference, a vector per layer of memory).
    `with DoraCaching():` for a block, `DoraCaching()(enabled=True)` to switch it on for good. Training mode
    never caches; switching modes clears the caches."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.prev_value = None

    def __enter__(self):
        self.prev_value = _dora.ENABLE_DORA_CACHING
        _dora.ENABLE_DORA_CACHING = self.enabled

    def __exit__(self, *exc):
        _dora.ENABLE_DORA_CACHING = self.prev_value
        self.prev_value = None

    def __call__(self, enabled: bool = True) -> None:
        _dora.ENABLE_DORA_CACHING = enabled


@contextmanager
def disable_input_dtype_casting(model: nn.Module, active: bool = True):
    if not active:
        yield
        return
    layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
    before = [m.__dict__.get("cast_input_dtype_enabled") for m in layers]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for layer, value in zip(layers, before):
            if value is None:
                layer.__dict__.pop("cast_input_dtype_enabled", None)   # back to the class default
            else:
                layer.cast_input_dtype_enabled = value


__all__ = ["DoraCaching", "check_if_peft_model", "disable_input_dtype_casting", "rescale_adapter_scale", "update_forward_signature",
           "update_generate_signature", "update_signature"]
