"""(IA)^3 over bitsandbytes' quantized linears: the vector scales the base's input or output as on a plain
Linear (the base computes x dequant(W_q)^T), and is float32 (PEFT's dtype there).

PEFT cannot merge (IA)^3 into a quantized base; here IA3Layer's merge folds l into the dequantized weight and
requantizes it (W' = requant(dequant(W_q) * l)), an unmerge divides it out the same way, and the merge reports
the rounding (rewrite/merge.py) like every merge into a quantized base.
"""
from __future__ import annotations

import torch

from ...quantized import ready_for_training
from ...quantized.bnb import BNB_4BIT, BNB_8BIT
from ..spec import Handler
from .linear import Linear


class _TrainsOnQuantizedBase:
    """Training forwards on the weight layout bitsandbytes can differentiate (an eval pass may have repacked
    it); merges go through IA3Layer's, on the dequantized weight."""

    repr_with_method = True   # PEFT prints these as "ia3.Linear4bit("

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.training:
            ready_for_training(self.get_base_layer())
        return super().forward(x, *args, **kwargs)


class Linear4bit(_TrainsOnQuantizedBase, Linear):
    """(IA)^3 on a bitsandbytes Linear4bit (PEFT's ia3.Linear4bit)."""


class Linear8bitLt(_TrainsOnQuantizedBase, Linear):
    """(IA)^3 on a bitsandbytes Linear8bitLt (PEFT's ia3.Linear8bitLt)."""


QUANTIZED_HANDLERS = (   # quantized bases match only rows naming their backend (MethodSpec.handler_for)
    Handler(BNB_4BIT.accepts, Linear4bit, BNB_4BIT.label, backend=BNB_4BIT),
    Handler(BNB_8BIT.accepts, Linear8bitLt, BNB_8BIT.label, backend=BNB_8BIT),
)
