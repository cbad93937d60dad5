"""Quantize an architecture on the meta device as transformers would load it with a BitsAndBytesConfig, so
`surgery plan MODEL --quantize nf4` shows a QLoRA plan (formats, block sizes, memory) without weights."""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .bnb import INSTALL_HINT

KINDS = ("nf4", "nf4-dq", "fp4", "int8")   # nf4-dq: nf4 with double quantization (the QLoRA paper's setting)


def quantize_for_planning(model: nn.Module, kind: str) -> nn.Module:
    """Swap the model's Linear / Conv1D layers (not those transformers keeps, such as the output head) for
    bitsandbytes layers of `kind`, in place, as from_pretrained(quantization_config=...) does."""
    if kind not in KINDS:
        raise ConfigError(f"--quantize {kind!r} is not valid; valid: {', '.join(KINDS)}")
    try:
        import bitsandbytes  # noqa: F401  (transformers' replacement imports it too)
    except ImportError:
        raise ConfigError(f"--quantize {kind} needs bitsandbytes, which is not installed: {INSTALL_HINT}") from None
    from transformers import BitsAndBytesConfig
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear
    from transformers.quantizers.base import get_keys_to_not_convert

    if kind == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind.removesuffix("-dq"),
                                    bnb_4bit_use_double_quant=kind.endswith("-dq"))
    return replace_with_bnb_linear(model, modules_to_not_convert=get_keys_to_not_convert(model),
                                   quantization_config=config)
