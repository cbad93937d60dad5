"""Replace quantized base modules by plain full-precision ones: a merge into the result keeps the adapter
exactly (merging back into 4-bit rounds every merged weight to the 4-bit grid and changes generations,
peft#2321), and the model saves as an ordinary checkpoint."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .backends import backend_of


def _dense_linear(module: nn.Module, dtype: Optional[torch.dtype]) -> nn.Linear:
    weight = backend_of(module).dequantize(module)
    dtype = dtype or weight.dtype
    bias = getattr(module, "bias", None)
    dense = nn.Linear(module.in_features, module.out_features, bias=bias is not None, device="meta")
    dense.weight = nn.Parameter(weight.to(dtype).reshape(module.out_features, module.in_features).contiguous(),
                                requires_grad=False)
    if bias is not None:
        dense.bias = nn.Parameter(bias.detach().to(dtype).clone(), requires_grad=bias.requires_grad)
    dense.train(module.training)
    return dense


@torch.no_grad()
def dequantize_modules(model: nn.Module, dtype: Optional[torch.dtype] = None) -> list[str]:
    """Swap every quantized module of `model` (adapter layers' bases included) for an nn.Linear holding its
    dequantized weight, in `dtype` (default: the model config's dtype, else what dequantizing gives).
    Drops transformers' quantization settings, so save_pretrained writes a plain model. Returns the paths."""
    if dtype is None:
        config_dtype = getattr(getattr(model, "config", None), "dtype", None)
        dtype = config_dtype if isinstance(config_dtype, torch.dtype) and config_dtype.is_floating_point else None
    swapped = []
    for fqn, module in list(model.named_modules()):
        if backend_of(module) is None:
            continue
        parent_name, _, attr = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, _dense_linear(module, dtype))
        swapped.append(fqn)
    quantizer = getattr(model, "hf_quantizer", None)
    if swapped and quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(model, flag, False):
            setattr(model, flag, False)
    return swapped
