"""bitsandbytes bases: Linear4bit (nf4 / fp4, blockwise absmax) and Linear8bitLt (LLM.int8(), row-wise absmax).

    4-bit:  W ≈ code[q] * absmax(block)          q in 0..15, one absmax per block of `blocksize` values
    8-bit:  W ≈ q * SCB(row) / 127               q in -127..127, one scale per output row

Dequantizing and requantizing go through bitsandbytes' own functions and parameter classes with the
weight's own settings, so a merge stores exactly what PEFT's merge stores. On CPUs with AVX512-BF16,
bitsandbytes repacks a 4-bit weight for inference on its first no-grad forward; reading it unpacks it first
(as bitsandbytes' own state_dict does, fixing the scales' order that its inverse forgets without double
quantization), so a merge after generation reads the true weight, up to the repack's bf16 rounding of the
block scales (~0.4%).
"""
from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import nn

from .backend import QuantBackend

INSTALL_HINT = "pip install 'surgery[bnb]' (or pip install bitsandbytes)"


def _bnb():
    return sys.modules.get("bitsandbytes")


def _is(module: nn.Module, cls_name: str) -> bool:
    bnb = _bnb()
    return bnb is not None and isinstance(module, getattr(bnb.nn, cls_name))


# -- 4-bit -------------------------------------------------------------------------------------------------
def _unpacked_4bit(module: nn.Module) -> torch.Tensor:
    """module.weight in bitsandbytes' canonical layout (undoing the CPU inference repacking, in place)."""
    weight = module.weight
    state = weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
        nested = state.original_nested
        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
        if not nested:   # bitsandbytes 0.50 leaves the scales in the packed (blocks, rows) order: restore it
            state.absmax = state.absmax.T.reshape(-1).float()
        if getattr(module, "quant_state", None) is not None:
            module.quant_state = weight.quant_state
    return weight


def _dequantize_4bit(module: nn.Module) -> torch.Tensor:
    weight = _unpacked_4bit(module)
    return _bnb().functional.dequantize_4bit(weight.data, weight.quant_state)


def _requantize_4bit(module: nn.Module, dense: torch.Tensor) -> None:
    old = _unpacked_4bit(module)
    # the weight's own settings (blocksize, quant_type, compress_statistics, quant_storage, module); private
    # attributes (torch.compile adds some) and the old data and state are not settings
    settings = {k: v for k, v in old.__dict__.items() if not k.startswith("_") and k not in ("data", "quant_state")}
    settings.update(bnb_quantized=False, requires_grad=False)
    fresh = _bnb().nn.Params4bit(dense.to("cpu"), **settings).to(old.device)
    module.weight = fresh
    if hasattr(module, "quant_state"):
        module.quant_state = fresh.quant_state


def _describe_4bit(module: nn.Module) -> dict:
    weight = module.weight
    state = weight.quant_state
    return {"format": getattr(weight, "quant_type", "fp4"), "bits": 4,
            "block_size": getattr(state, "blocksize", None) or getattr(weight, "blocksize", 64),
            "double_quant": bool(getattr(weight, "compress_statistics", False)),
            "compute_dtype": str(_compute_4bit(module)).removeprefix("torch.")}


def _bytes_4bit(module: nn.Module) -> int:
    """Two codes per byte, one float32 absmax per block; with double quantization the absmax are 8-bit codes
    with one float32 scale per 256 of them (plus a 256-entry code table). A meta module (not yet quantized)
    is sized as it will be stored."""
    values = module.in_features * module.out_features
    info = _describe_4bit(module)
    blocks = -(-values // info["block_size"])
    scales = blocks + 4 * -(-blocks // 256) + 4 * 256 if info["double_quant"] else 4 * blocks
    return -(-values // 2) + scales


def _compute_4bit(module: nn.Module) -> torch.dtype:
    state = getattr(module.weight, "quant_state", None)
    return module.compute_dtype or getattr(state, "dtype", None) or torch.get_default_dtype()


def _numel_4bit(param: torch.Tensor) -> Optional[int]:
    # PEFT counts a Params4bit as its bytes x 2 (two 4-bit values per byte of quant_storage)
    if type(param).__name__ != "Params4bit":
        return None
    if not getattr(param, "bnb_quantized", True):   # not quantized yet (a meta plan): the values themselves
        return param.numel()
    storage = getattr(param, "quant_storage", None)
    itemsize = param.element_size() if hasattr(param, "element_size") else getattr(storage, "itemsize", 1)
    return param.numel() * 2 * itemsize


BNB_4BIT = QuantBackend(
    name="bnb-4bit", label="bitsandbytes.nn.Linear4bit",
    accepts=lambda m: _is(m, "Linear4bit"),
    dequantize=_dequantize_4bit, requantize=_requantize_4bit, describe=_describe_4bit, weight_bytes=_bytes_4bit,
    compute_dtype=_compute_4bit, stored_numel=_numel_4bit,
    ready_for_training=_unpacked_4bit)


# -- 8-bit -------------------------------------------------------------------------------------------------
def _row_scales(module: nn.Module) -> torch.Tensor:
    state, weight = module.state, module.weight
    if state.SCB is None:
        state.SCB = weight.SCB
    return state.SCB


def _dequantize_8bit(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    if weight.dtype != torch.int8:   # has_fp16_weights: the weight is stored dense
        return weight.data
    scales = _row_scales(module).to(weight.device)
    return _bnb().functional.int8_vectorwise_dequant(weight.data, scales)


def _requantize_8bit(module: nn.Module, dense: torch.Tensor) -> None:
    old = module.weight
    module.weight = _bnb().nn.Int8Params(dense.to("cpu"), requires_grad=False,
                                         has_fp16_weights=old.has_fp16_weights).to(old.device)
    module.state.reset_grads()   # the next forward takes the new int8 weight and its scales


def _describe_8bit(module: nn.Module) -> dict:
    # one scale per output row: the "block" is a row of in_features values
    return {"format": "int8", "bits": 8, "block_size": module.in_features, "double_quant": False,
            "threshold": module.state.threshold, "compute_dtype": str(_compute_8bit(module)).removeprefix("torch.")}


def _bytes_8bit(module: nn.Module) -> int:
    if module.state.has_fp16_weights:
        return module.in_features * module.out_features * 2
    return module.in_features * module.out_features + 4 * module.out_features


def _compute_8bit(module: nn.Module) -> torch.dtype:
    bias = getattr(module, "bias", None)
    return bias.dtype if bias is not None and bias.is_floating_point() else torch.get_default_dtype()


BNB_8BIT = QuantBackend(
    name="bnb-8bit", label="bitsandbytes.nn.Linear8bitLt",
    accepts=lambda m: _is(m, "Linear8bitLt"),
    dequantize=_dequantize_8bit, requantize=_requantize_8bit, describe=_describe_8bit, weight_bytes=_bytes_8bit,
    compute_dtype=_compute_8bit)
