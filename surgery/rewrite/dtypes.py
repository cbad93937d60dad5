"""Adapter dtype policy: adapters on a half-precision (or float8) base are kept in float32, as PEFT's
`autocast_adapter_dtype=True` (the default) does. Low-rank factors trained in bf16 lose most of a small
update to rounding; float32 factors cost little memory (they are tiny) and the layer casts its output back
to the base dtype, so the model's interface does not change."""
from __future__ import annotations

import torch
from torch import nn

from ..graph.walk import all_modules, visible_adapter_layers

_UPCAST = {torch.float16, torch.bfloat16} | {
    getattr(torch, name) for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
                                      "float8_e8m0fnu") if hasattr(torch, name)}


def upcast_adapter(model: nn.Module, adapter_name: str) -> int:
    """Move adapter `adapter_name`'s parameters from half/float8 to float32 (new Parameter objects, the
    requires_grad flags kept). Returns how many tensors changed."""
    changed = 0
    # the adapter's parameters are in adapter layers' containers: other adapters' parts are not searched
    for module in visible_adapter_layers(model):
        if not hasattr(module, "adapter_containers"):
            continue   # modules_to_save copies keep the base dtype, as in PEFT
        for _, holder in module.adapter_containers():
            param = holder._parameters.get(adapter_name)
            if param is not None:
                if param.dtype in _UPCAST:
                    holder._parameters[adapter_name] = _float32(param)
                    changed += 1
                continue
            owner_root = holder._modules.get(adapter_name)
            for owner in all_modules(owner_root) if owner_root is not None else ():
                for key, p in owner._parameters.items():
                    if p is not None and p.dtype in _UPCAST:
                        owner._parameters[key] = _float32(p)
                        changed += 1
    return changed


def _float32(param: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(param.data.to(torch.float32), requires_grad=param.requires_grad)


def cast_mixed_precision_params(model: nn.Module, dtype: torch.dtype) -> None:
    """PEFT's helper for mixed-precision training: frozen parameters to `dtype` (fp16/bf16), trainable ones to
    float32 (what autocast expects of the weights it updates). In place, on `.data`."""
    for param in model.parameters():
        param.data = param.to(torch.float32 if param.requires_grad else dtype)
