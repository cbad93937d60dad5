"""LoRA for nn.Linear and transformers' Conv1D (GPT-2's (in, out) weight: fan_in_fan_out).

    x ──► base_layer ──────────────────────────► (+) ──► y
     └──► dropout ──► A (in→r) ──► B (r→out) ──► × s ┘
"""
from __future__ import annotations

import torch

from .fused import fused_forward
from .layer import LoraLayer


class Linear(LoraLayer):
    supports_dora = True

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

    def _adapter_output(self, x: torch.Tensor, name: str, result: torch.Tensor) -> torch.Tensor:
        lora_A, lora_B = self.lora_A[name], self.lora_B[name]
        fusable = self.training and torch.is_grad_enabled() and result.dtype == lora_B.weight.dtype
        if not fusable or self.use_dora[name] or lora_B.bias is not None:
            # Inference keeps PEFT's exact op order, so outputs stay bit-identical to PEFT's.
            return super()._adapter_output(x, name, result)
        # Training: result + s * (h @ B^T) as one addmm, the scaling and the residual add inside the GEMM
        # instead of two extra passes over the (tokens x out) activations, forward and backward
        # (about 2% of a train step; the sums differ from PEFT's order only by float rounding, ~1e-7).
        h = lora_A(self.lora_dropout[name](x.to(lora_A.weight.dtype)))
        out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), lora_B.weight.t(),
                          alpha=self.scaling[name])
        return out.view(result.shape)
