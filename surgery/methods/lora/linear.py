"""LoRA for nn.Linear and transformers' Conv1D (GPT-2's (in, out) weight: fan_in_fan_out).

    x ──► base_layer ──────────────────────────► (+) ──► y
     └──► dropout ──► A (in→r) ──► B (r→out) ──► × s ┘
"""
from __future__ import annotations

import math

import torch

from .fused import fused_forward
from .inference import inference_forward
from .layer import LoraLayer


class Linear(LoraLayer):
    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return True


    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not args and not kwargs:
            # training (one fused node) or no-grad inference (the product accumulated into the base output)
            out = inference_forward(self, x) if not torch.is_grad_enabled() else fused_forward(self, x)
            if out is not None:
                return out
        return super().forward(x, *args, **kwargs)

    def add_delta_(self, weight: torch.Tensor, name: str, sign: int, round_first: bool = False) -> torch.Tensor:
        A = self.lora_A[name].weight
        B = self.lora_B[name].weight
        alpha = sign * float(self.scaling[name])   # addmm_'s alpha is a number (a hot-swap scaling: a tensor)
        left, right = (A.T, B.T) if self.fan_in_fan_out else (B, A)
        if A.dtype == B.dtype == weight.dtype:
            # addmm_ folds s * B @ A in without allocating the out x in delta.
            return weight.addmm_(left, right, alpha=alpha)
        if round_first or A.dtype != torch.float32 or B.dtype != torch.float32 or not weight.is_floating_point():
            return super().add_delta_(weight, name, sign, round_first)
        # float32 factors on a half-precision weight, PEFT's arithmetic: round(W + s * (B @ A)) computed at
        # float32. Through a float32 copy of W (fast conversions) instead of a mixed-dtype add (CPU bf16: 65x
        # the float32 merge for PEFT users, peft#1977); a power-of-two s scales exactly, so addmm's alpha
        # rounds as the separate product and scaling do.
        merged = weight.float()
        if math.frexp(abs(alpha))[0] == 0.5:
            merged.addmm_(left, right, alpha=alpha)
        else:
            merged.add_(torch.mm(left, right).mul_(alpha))
        return weight.copy_(merged)
