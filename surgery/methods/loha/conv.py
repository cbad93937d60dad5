"""LoHa for nn.Conv1d and nn.Conv2d (PEFT's class names): ΔW (flat or CP, see layer.py) in the base's kernel
shape, applied as F.conv1d / F.conv2d with the base's stride, padding, dilation and groups."""
from __future__ import annotations

import torch

from ..lycoris.conv import conv_delta
from .layer import LoHaLayer


class _LoHaConv(LoHaLayer):
    def apply_delta(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return conv_delta(self.get_base_layer(), x, delta)


class Conv1d(_LoHaConv):
    """LoHa on an nn.Conv1d (CP cores are (r, r, k, 1), as PEFT's)."""


class Conv2d(_LoHaConv):
    """LoHa on an nn.Conv2d."""
