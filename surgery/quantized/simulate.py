"""The CLI's --quantize: transformers' BitsAndBytesConfig for a kind name (`surgery merge --quantize`), and an
architecture quantized on the meta device as transformers would load it, so `surgery plan MODEL --quantize
nf4` shows a QLoRA plan (formats, block sizes, memory) without weights."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .bnb import INSTALL_HINT

KINDS = ("nf4", "nf4-dq", "fp4", "int8")   # nf4-dq: nf4 with double quantization (the QLoRA paper's setting)


def bnb_loading_config(kind: str):
    """transformers' BitsAndBytesConfig for `kind` (float32 compute: what runs on the CPU)."""
    if kind not in KINDS:
        raise ConfigError(f"quantize = {kind!r} is not valid; valid: {', '.join(KINDS)}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"quantize = {kind} needs bitsandbytes, which is not installed: {INSTALL_HINT}") from None
    from transformers import BitsAndBytesConfig

    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind.removesuffix("-dq"),
                              bnb_4bit_use_double_quant=kind.endswith("-dq"), bnb_4bit_compute_dtype=torch.float32)


def quantize_for_planning(model: nn.Module, kind: str) -> nn.Module:
    """Swap the model's Linear / Conv1D layers (not those transformers keeps, such as the output head) for
    bitsandbytes layers of `kind`, in place, as from_pretrained(quantization_config=...) does."""
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear
    from transformers.quantizers.base import get_keys_to_not_convert

    config = bnb_loading_config(kind)
    return replace_with_bnb_linear(model, modules_to_not_convert=get_keys_to_not_convert(model),
                                   quantization_config=config)
