"""BOFT for nn.Conv2d: the weight is rotated (a convolution's input cannot be rotated per patch cheaply).

    W_flat = W.view(out, in * k * k)          (in, kh, kw) order, as PEFT flattens it
    y = conv2d(x, (s ⊙ W_flat M^T).view(W.shape)) + b

The spec refuses what PEFT's forward would compute differently from its merged weight (dilation, non-square
kernels, per-axis stride or padding, groups, a padding mode).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layer import BOFTLayer


class Conv2d(BOFTLayer):
    def scale_shape(self) -> tuple[int, int]:
        return (1, self.out_features)   # PEFT's layout for Conv2d: (1, out)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.runs_base_only():
            return self.base_layer(x, *args, **kwargs)
        names = self.active_in_layer()
        if not names:
            return self.base_layer(x, *args, **kwargs)
        previous_dtype = x.dtype
        base = self.get_base_layer()
        weight = self.rotated_weight(names).reshape(base.weight.shape)
        bias = base.bias.to(weight.dtype) if base.bias is not None else None
        result = F.conv2d(x.to(weight.dtype), weight, bias, stride=base.stride, padding=base.padding,
                          dilation=base.dilation)
        return result.to(previous_dtype)
