"""LoKr for nn.Linear.

    x ──► base_layer ─────────────────────────────► (+) ──► y
     └──► ΔW = s (W1 ⊗ W2) ──► x ΔWᵀ ───────────────┘

Inference (and any no-grad forward) forms ΔW with torch.kron as PEFT does, so outputs are bit-identical to
PEFT's. A training forward with grad never forms it: with x viewed as (tokens, c, d) the delta's output is
s W1 X W2ᵀ (kron.py), two small matmuls, and the rank-dropout mask (PEFT's draw: one value per output row)
multiplies that output, which is the same as masking ΔW's rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .kron import factored_is_cheaper, kron_apply
from .layer import LoKrLayer


class Linear(LoKrLayer):
    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return True   # additive: W + ΔW

    def apply_delta(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return F.linear(x, delta)

    def _delta_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        layout = self.layouts[name]
        if not (self.training and torch.is_grad_enabled()) or not factored_is_cheaper(
                layout.a, layout.b, layout.c, layout.d):
            return super()._delta_output(x, name)
        w1, w2 = self.w1(name) * self.scaling[name], self.w2(name)   # the scale on the smaller factor
        out = kron_apply(self._cast_input_dtype(x, w1.dtype), w1, w2)
        mask = self.rank_mask(name, self.out_features, out.dtype, out.device)
        return out if mask is None else out * mask
