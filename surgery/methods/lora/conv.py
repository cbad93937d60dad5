"""LoRA for nn.Conv1d/2d/3d (PEFT's _ConvNd), grouped convolutions included.

    A: conv(in -> r) with the base's kernel, stride, padding and dilation, over *every* input channel
       weight (r, in, *kernel)
    B: 1x1 conv (r -> out) with the base's groups                        weight (out, r / groups, 1...)
    y = conv(x; W) + s * B(A(x))

groups == 1: the delta is (B.flatten(1) @ A.flatten(1)) in W's shape, merged like a Linear's.
groups > 1:  A mixes all input channels, so the effective delta is dense across groups and a grouped W
             (out, in / groups, *kernel) cannot hold it: merging is refused, as in PEFT; r must be a multiple
             of groups (B's grouped input), checked when planning.
DoRA: m has PEFT's shape (1, out, 1...); n is the norm of each output channel's slice of W + s * delta. For
groups > 1 PEFT pairs B.reshape(-1, r) @ A.reshape(r, -1) with W's elements (reshaped into W's shape);
surgery computes that same quantity, so outputs and checkpoints carry over.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.utils import skip_init

from ...errors import MergeError
from .init import init_linear_like
from .layer import LoraLayer

_CONV_BY_DIM = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class GroupedConvMergeError(MergeError, NotImplementedError):
    """A grouped convolution's LoRA delta cannot be merged (a MergeError; also PEFT's NotImplementedError)."""


class Conv(LoraLayer):
    def _get_name(self) -> str:   # printed (and get_layer_status's module_type) as PEFT's per-dimension class
        return f"Conv{self.get_base_layer().weight.dim() - 2}d"

    def in_out_features(self) -> tuple[int, int]:
        base = self.get_base_layer()
        return base.in_channels, base.out_channels

    def _new_factors(self, adapter_name: str, r: int, config) -> None:
        base = self.get_base_layer()
        conv = _CONV_BY_DIM[base.weight.dim() - 2]
        ones = (1,) * (base.weight.dim() - 2)
        kwargs = dict(device=base.weight.device, dtype=base.weight.dtype)
        # skip_init: no default init on the device; init_linear_like draws it as PEFT does (on the CPU)
        self.lora_A[adapter_name] = skip_init(conv, base.in_channels, r, base.kernel_size, base.stride,
                                              base.padding, dilation=base.dilation, bias=False, **kwargs)
        self.lora_B[adapter_name] = skip_init(conv, r, base.out_channels, ones, ones, groups=base.groups,
                                              bias=config.lora_bias, **kwargs)
        init_linear_like(config.init_lora_weights, self.lora_A[adapter_name], self.lora_B[adapter_name], r)

    # -- merge -------------------------------------------------------------------------------------------
    def merge_refusal(self) -> Optional[MergeError]:
        groups = self.get_base_layer().groups
        if groups == 1:
            return None
        return GroupedConvMergeError(
            f"{self._layer_name()} is a grouped convolution (groups={groups}): its LoRA update mixes every input "
            f"channel, which the grouped weight cannot hold, so it cannot be merged (PEFT refuses it too); "
            f"keep the adapter unmerged")

    def delta_weight(self, name: str) -> torch.Tensor:
        refusal = self.merge_refusal()
        if refusal is not None:
            raise refusal
        A = self.lora_A[name].weight
        B = self.lora_B[name].weight
        shape = self.get_base_layer().weight.shape
        return (B.flatten(1) @ A.flatten(1)).reshape(shape) * self.scaling[name]

    # -- DoRA --------------------------------------------------------------------------------------------
    def dora_view(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.flatten(1)

    def dora_factors(self, name: str):
        if self.get_base_layer().groups != 1:
            return None
        return self.lora_A[name].weight.flatten(1), self.lora_B[name].weight.flatten(1)

    def dora_delta(self, name: str) -> torch.Tensor:
        """PEFT's unscaled DoRA delta for a grouped conv, as rows: B.reshape(-1, r) @ A.reshape(r, -1) laid
        into W's shape."""
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        r = A.shape[0]
        weight = self.get_base_layer().weight
        return (B.reshape(-1, r) @ A.reshape(r, -1)).reshape(weight.shape).flatten(1)

    def dora_factor_shape(self) -> tuple[int, ...]:
        return (-1,) + (1,) * (self.get_base_layer().weight.dim() - 1)

    def dora_magnitude_shape(self) -> tuple[int, ...]:
        weight = self.get_base_layer().weight
        return (1, weight.shape[0]) + (1,) * (weight.dim() - 2)

    def output_bias(self, result: torch.Tensor) -> Optional[torch.Tensor]:
        bias = self.get_base_layer().bias
        return None if bias is None else bias.view((1, -1) + (1,) * (result.dim() - 2))

    def base_without_bias(self, x: torch.Tensor) -> torch.Tensor:
        base = self.get_base_layer()
        # _conv_forward keeps the base's padding_mode, stride, dilation and groups
        return base._conv_forward(x, base.weight.to(x.dtype), None)
