"""LoHa for nn.Linear.

    x ──► base_layer ─────────────────────────► (+) ──► y
     └──► ΔW = s (W1a W1b) ⊙ (W2a W2b) ──► x ΔWᵀ ┘

Inference (and any no-grad forward) forms ΔW as PEFT does, so outputs are bit-identical to PEFT's. A training
forward with grad multiplies by the Khatri-Rao factors instead (hadamard.py): ΔW x = K_a (K_b x), r² (in + out)
per token instead of in * out, and autograd never sees an (out x in) matrix; the rank-dropout mask (PEFT's
draw) and the scaling fold into W1a's rows. Where r² (in + out) >= in * out the dense form is cheaper and used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .hadamard import factored_is_cheaper, khatri_rao
from .layer import LoHaLayer


class Linear(LoHaLayer):
    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return True   # additive: W + ΔW

    def apply_delta(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return F.linear(x, delta)

    def _delta_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()) or not factored_is_cheaper(
                self.r[name], self.in_features, self.out_features):
            return super()._delta_output(x, name)
        w1a, w1b, w2a, w2b = self.hada_w1_a[name], self.hada_w1_b[name], self.hada_w2_a[name], self.hada_w2_b[name]
        mask = self.rank_mask(name, self.out_features, w1a.dtype, w1a.device)
        row_scale = self.scaling[name] if mask is None else mask * self.scaling[name]
        k_a, k_b = khatri_rao(w1a, w1b, w2a, w2b, row_scale)
        return F.linear(F.linear(self._cast_input_dtype(x, k_a.dtype), k_b), k_a)
