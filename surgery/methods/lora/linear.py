"""LoRA for nn.Linear and transformers' Conv1D (GPT-2's (in, out) weight: fan_in_fan_out).

    x ──► base_layer ──────────────────────────► (+) ──► y
     └──► dropout ──► A (in→r) ──► B (r→out) ──► × s ┘
"""
from __future__ import annotations

import torch

from .fused import fused_forward
from .layer import LoraLayer


class Linear(LoraLayer):
    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return True


    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not args and not kwargs:
            out = fused_forward(self, x)   # training fast path; None where it does not apply
            if out is not None:
                return out
        return super().forward(x, *args, **kwargs)

    def add_delta_(self, weight: torch.Tensor, name: str, sign: int, round_first: bool = False) -> torch.Tensor:
        A = self.lora_A[name].weight
        B = self.lora_B[name].weight
        if not (A.dtype == B.dtype == weight.dtype):
            return super().add_delta_(weight, name, sign, round_first)
        # addmm_ folds s * B @ A in without allocating the out x in delta.
        alpha = sign * self.scaling[name]
        if self.fan_in_fan_out:
            return weight.addmm_(A.T, B.T, alpha=alpha)
        return weight.addmm_(B, A, alpha=alpha)
