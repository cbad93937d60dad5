"""(IA)^3 for nn.Conv2d / nn.Conv3d: the vector is (1, C, 1, ...) over the channel dimension, C the input
channels (feed-forward) or the output channels. Merged into the weight (out, in / groups, *kernel) as a
per-output-channel factor, or per-input-channel (expanded over the groups of a grouped convolution).
"""
from __future__ import annotations

import torch

from .layer import IA3Layer


class Conv(IA3Layer):
    def _get_name(self) -> str:   # printed (and get_layer_status's module_type) as PEFT's per-dimension class
        return f"Conv{self.get_base_layer().weight.dim() - 2}d"

    def vector_shape(self) -> tuple[int, ...]:
        channels = self.in_features if self.is_feedforward else self.out_features
        return (1, channels) + (1,) * (self.get_base_layer().weight.dim() - 2)

    def weight_scale(self, vector: torch.Tensor) -> torch.Tensor:
        if not self.is_feedforward:
            return vector.transpose(0, 1)   # (out, 1, 1, ...): one factor per output channel
        base = self.get_base_layer()
        if base.groups == 1:
            return vector
        # input channel g * per_group + i feeds the output channels of group g at weight column i
        per_group_in, per_group_out = base.in_channels // base.groups, base.out_channels // base.groups
        kernel = vector.shape[2:]
        grouped = vector.reshape(base.groups, 1, per_group_in, *kernel)
        return grouped.expand(base.groups, per_group_out, per_group_in, *kernel).reshape(
            base.out_channels, per_group_in, *kernel)

    def _scaled_forward(self, x: torch.Tensor, scale: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # PEFT's casts: the scaled input in the base weight's dtype; the output in the vector's, then x's
        previous = x.dtype
        if self.is_feedforward:
            scaled = (x.to(scale.dtype) * scale).to(self.get_base_layer().weight.dtype)
            return self.base_layer(scaled, *args, **kwargs).to(previous)
        result = self.base_layer(x, *args, **kwargs)
        return (result.to(scale.dtype) * scale).to(previous)
