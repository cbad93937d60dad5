"""BOFT for nn.Linear: the input is rotated, not the weight (training never forms W M^T, whose gradient would
cost a full out x in product per step).

    y = s ⊙ (W (x M)) + b  =  s ⊙ (base(x @ M) - b) + b        x @ M: one batched (D, b, b) product per factor

    x ──► rotate by M (butterfly blocks) ──► base_layer ──► (- b) × s (+ b) ──► y
"""
from __future__ import annotations

import torch

from .butterfly import rotate_rows
from .layer import BOFTLayer


class Linear(BOFTLayer):
    def scale_shape(self) -> tuple[int, int]:
        return (self.out_features, 1)   # PEFT's layout for Linear: (out, 1)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.runs_base_only():
            return self.base_layer(x, *args, **kwargs)
        names = self.active_in_layer()
        if not names:
            return self.base_layer(x, *args, **kwargs)
        previous_dtype = x.dtype
        blocks = [self.blocks(n) for n in names]   # in activation order: dropout draws as PEFT's
        for Q in reversed(blocks):                  # x @ (M_a2 M_a1) = (x @ M_a2) @ M_a1
            x = rotate_rows(x, Q.to(x.dtype))
        result = self.base_layer(x, *args, **kwargs)
        scale = self.total_scale(names)
        bias = self.get_base_layer().bias
        if bias is None:
            result = result * scale
        else:   # s ⊙ (result - b) + b, in one pass over the output
            result = torch.addcmul(bias * (1 - scale), result, scale)
        return result.to(previous_dtype)
