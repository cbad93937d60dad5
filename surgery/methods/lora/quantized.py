"""LoRA over quantized linears (QLoRA: bitsandbytes 4-bit / 8-bit; torchao int8): the base stays quantized and
frozen, the factors are float (float32 by default, as PEFT), and

    y = base(x) + s * B(A(dropout(x)))          base(x) = x dequant(W_q)^T (+ b), computed by bitsandbytes

DoRA reads the dequantized weight for its row norms. Merging dequantizes W_q, adds s * B A and requantizes
with the weight's own settings (PEFT's arithmetic, so merged weights equal PEFT's); the rounding this costs is
measured and reported by the merge (rewrite/merge.py), and merge_and_unload(dequantize=True) avoids it.
PEFT's class names (peft.tuners.lora.bnb.Linear4bit / Linear8bitLt), so isinstance checks and reprs match.
"""
from __future__ import annotations

import torch

from ...quantized import ready_for_training
from ...quantized.bnb import BNB_4BIT, BNB_8BIT
from ...quantized.torchao import TORCHAO
from ..spec import Handler
from .fused_quantized import fused_quantized_forward
from .linear import Linear


class Linear4bit(Linear):
    """LoRA on a bitsandbytes Linear4bit (nf4 / fp4); training runs one fused node (fused_quantized.py)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.training:   # an eval pass may have repacked the weight for bitsandbytes' backward-less kernel
            ready_for_training(self.get_base_layer())
        if not args and not kwargs:
            out = fused_quantized_forward(self, x)
            if out is not None:
                return out
        return super().forward(x, *args, **kwargs)


class Linear8bitLt(Linear):
    """LoRA on a bitsandbytes Linear8bitLt (LLM.int8())."""


class TorchaoLoraLinear(Linear):
    """LoRA on an nn.Linear with a torchao quantized weight (PEFT's class name); merges requantize int8."""


def _torchao_refuses(base, config, fqn: str):
    if config.lora_bias:   # as PEFT: the merged bias would have nowhere to go in torchao's layout
        return f"lora_bias=True on {fqn!r} (a torchao quantized Linear) is not supported; set lora_bias=False"
    if type(base.weight).__name__ == "Int4Tensor":
        return f"target module {fqn!r} has a torchao int4 weight; LoRA supports torchao int8 weights only (as PEFT)"
    return None


# Quantized bases match only rows that name their backend (MethodSpec.handler_for).
QUANTIZED_HANDLERS = (
    Handler(BNB_4BIT.accepts, Linear4bit, BNB_4BIT.label, backend=BNB_4BIT),
    Handler(BNB_8BIT.accepts, Linear8bitLt, BNB_8BIT.label, backend=BNB_8BIT),
    Handler(TORCHAO.accepts, TorchaoLoraLinear, TORCHAO.label, refuses=_torchao_refuses, backend=TORCHAO),
)
