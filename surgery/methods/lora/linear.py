"""LoRA for nn.Linear and transformers' Conv1D (GPT-2's (in, out) weight: fan_in_fan_out).

    x ──► base_layer ──────────────────────────► (+) ──► y
     └──► dropout ──► A (in→r) ──► B (r→out) ──► × s ┘
"""
from __future__ import annotations

import torch

from .layer import LoraLayer


class Linear(LoraLayer):
    supports_dora = True

    def _merged_weight(self, weight: torch.Tensor, name: str, sign: int) -> torch.Tensor:
        if self.use_dora[name]:
            return super()._merged_weight(weight, name, sign)
        # addmm_ folds s * B @ A in without allocating the out x in delta.
        A = self.lora_A[name].weight.to(weight.dtype)
        B = self.lora_B[name].weight.to(weight.dtype)
        alpha = sign * self.scaling[name]
        if self.fan_in_fan_out:
            return weight.addmm_(A.T, B.T, alpha=alpha)
        return weight.addmm_(B, A, alpha=alpha)
