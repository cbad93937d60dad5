"""(IA)^3 over bitsandbytes' quantized linears: the vector scales the base's input or output as on a plain
Linear (the base computes x dequant(W_q)^T), and is float32 (PEFT's dtype there).

PEFT cannot merge (IA)^3 into a quantized base; here a merge folds l into the dequantized weight and
requantizes it (W' = requant(dequant(W_q) * l)), an unmerge divides it out the same way, and the merge reports
the rounding (rewrite/merge.py) like every merge into a quantized base.
"""
from __future__ import annotations

from typing import Optional

import torch

from ...quantized import ready_for_training
from ...quantized.bnb import BNB_4BIT, BNB_8BIT
from ..spec import Handler
from .layer import _UNMERGE_EPS
from .linear import Linear


class _QuantizedMerge:
    """Merge / unmerge through the dense weight (dequantize, scale, requantize); training forwards on the
    weight layout bitsandbytes can differentiate (an eval pass may have repacked it)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.training:
            ready_for_training(self.get_base_layer())
        return super().forward(x, *args, **kwargs)

    @torch.no_grad()
    def check_merge(self, adapter_names: Optional[list[str]] = None) -> None:
        weight, bias = self.dense_base_weight(), self._bias_data()
        for name in self._to_merge(adapter_names):
            new_weight, new_bias = self._scaled(weight, bias, name)
            self._refuse_non_finite(name, new_weight, new_bias)
            weight, bias = new_weight, bias if new_bias is None else new_bias

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        for name in self._to_merge(adapter_names):
            new_weight, new_bias = self._scaled(self.dense_base_weight(), self._bias_data(), name)
            if safe_merge:
                self._refuse_non_finite(name, new_weight, new_bias)
            self.store_base_weight(new_weight)
            if new_bias is not None:
                self.get_base_layer().bias.data.copy_(new_bias)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            vector = self.ia3_l[name].detach() + _UNMERGE_EPS
            weight = self.dense_base_weight()
            self.store_base_weight(torch.div(weight, self.weight_scale(vector)).to(weight.dtype))
            bias = self._bias_data()
            scale = self._bias_scale(name, bias)
            if scale is not None:
                self.get_base_layer().bias.data.copy_(torch.div(bias, scale + _UNMERGE_EPS))

    def _bias_data(self):
        bias = getattr(self.get_base_layer(), "bias", None)
        return None if bias is None else bias.data


class Linear4bit(_QuantizedMerge, Linear):
    """(IA)^3 on a bitsandbytes Linear4bit (PEFT's ia3.Linear4bit)."""


class Linear8bitLt(_QuantizedMerge, Linear):
    """(IA)^3 on a bitsandbytes Linear8bitLt (PEFT's ia3.Linear8bitLt)."""


QUANTIZED_HANDLERS = (   # quantized bases match only rows naming their backend (MethodSpec.handler_for)
    Handler(BNB_4BIT.accepts, Linear4bit, BNB_4BIT.label, backend=BNB_4BIT),
    Handler(BNB_8BIT.accepts, Linear8bitLt, BNB_8BIT.label, backend=BNB_8BIT),
)
