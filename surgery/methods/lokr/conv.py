"""LoKr for nn.Conv1d and nn.Conv2d (PEFT's class names): ΔW = s (W1 ⊗ W2) reshaped to the base's kernel
shape (a Conv1d with a full W2 keeps torch.kron's layout of (a, c) ⊗ (b, d, k), as PEFT), applied as
F.conv1d / F.conv2d with the base's stride, padding, dilation and groups."""
from __future__ import annotations

import torch

from ..lycoris.conv import conv_delta
from .layer import LoKrLayer


class _LoKrConv(LoKrLayer):
    def apply_delta(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return conv_delta(self.get_base_layer(), x, delta)


class Conv1d(_LoKrConv):
    """LoKr on an nn.Conv1d."""


class Conv2d(_LoKrConv):
    """LoKr on an nn.Conv2d."""
