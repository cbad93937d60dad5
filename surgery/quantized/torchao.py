"""torchao bases: an nn.Linear whose weight is a torchao quantized tensor subclass (int8 weight-only here:
`Int8Tensor`, one scale per output row, W ≈ q * scale).

Dequantizing is the tensor's own `dequantize()`. Requantizing rebuilds the weight with the quantization config
that made it (found from the tensor: int8 weight-only; an int8 tensor that also quantizes activations is
int8 dynamic), through torchao's `quantize_` on the module, as PEFT does. Other torchao formats wrap and train,
and refuse a merge into them with the way out (`merge_and_unload(dequantize=True)`).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import MergeError
from .backend import QuantBackend


def _is_torchao(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(module, nn.Linear) and type(weight).__module__.startswith("torchao.")


def _dequantize(module: nn.Module) -> torch.Tensor:
    return module.weight.dequantize()


def _config_of(weight):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    if type(weight).__name__ == "Int8Tensor":
        return Int8WeightOnlyConfig() if weight.act_quant_kwargs is None else Int8DynamicActivationInt8WeightConfig()
    return None


def _requantize(module: nn.Module, dense: torch.Tensor) -> None:
    config = _config_of(module.weight)
    if config is None:
        raise MergeError(f"cannot store a merged weight as torchao {type(module.weight).__name__}: surgery knows how "
                         f"to requantize int8 torchao weights only; use merge_and_unload(dequantize=True)")
    from torchao.quantization import quantize_

    del module.weight
    module.weight = nn.Parameter(dense.contiguous(), requires_grad=False)
    quantize_(module, config)


def _describe(module: nn.Module) -> dict:
    weight = module.weight
    return {"format": f"torchao {type(weight).__name__}", "bits": 8, "block_size": module.in_features,
            "double_quant": False, "compute_dtype": str(weight.dtype).removeprefix("torch.")}


def _bytes(module: nn.Module) -> int:
    weight = module.weight
    inner = [getattr(weight, name, None) for name in getattr(weight, "tensor_data_names", ())]
    return sum(t.numel() * t.element_size() for t in inner if isinstance(t, torch.Tensor))


TORCHAO = QuantBackend(
    name="torchao", label="torch.nn.Linear with a torchao quantized weight",
    accepts=_is_torchao, dequantize=_dequantize, requantize=_requantize, describe=_describe, weight_bytes=_bytes,
    compute_dtype=lambda module: module.weight.dtype)
