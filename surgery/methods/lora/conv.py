"""LoRA for nn.Conv1d/2d/3d: A is a conv with the base's kernel, stride, padding and dilation into r
channels; B is a 1x1 conv back out. The delta is (B.flatten(1) @ A.flatten(1)) in the base's weight shape.
"""
from __future__ import annotations

import torch
from torch import nn

from .init import init_linear_like
from .layer import LoraLayer

_CONV_BY_DIM = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class Conv(LoraLayer):
    def in_out_features(self) -> tuple[int, int]:
        base = self.get_base_layer()
        return base.in_channels, base.out_channels

    def _new_factors(self, adapter_name: str, r: int, config) -> None:
        base = self.get_base_layer()
        conv = _CONV_BY_DIM[base.weight.dim() - 2]
        ones = (1,) * (base.weight.dim() - 2)
        kwargs = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A[adapter_name] = conv(base.in_channels, r, base.kernel_size, base.stride, base.padding,
                                         dilation=base.dilation, bias=False, **kwargs)
        self.lora_B[adapter_name] = conv(r, base.out_channels, ones, ones, bias=config.lora_bias, **kwargs)
        if base.weight.device.type != "meta":
            init_linear_like(config.init_lora_weights, self.lora_A[adapter_name], self.lora_B[adapter_name], r)

    def delta_weight(self, name: str) -> torch.Tensor:
        A = self.lora_A[name].weight
        B = self.lora_B[name].weight
        shape = self.get_base_layer().weight.shape
        return (B.flatten(1) @ A.flatten(1)).reshape(shape) * self.scaling[name]
