"""Convolution helpers LoHa and LoKr share: the kernel geometry PEFT factorises, and the delta's conv.

PEFT's LyCORIS layers wrap nn.Conv1d and nn.Conv2d (groups allowed: the factors cover in_channels / groups);
the delta runs as F.conv1d / F.conv2d with the base's stride, padding, dilation and groups (zero padding,
whatever the base's padding_mode, as PEFT).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def kernel(base: nn.Module) -> tuple[int, ...]:
    """The kernel size of a conv base, () for a Linear."""
    return tuple(base.kernel_size) if isinstance(base, (nn.Conv1d, nn.Conv2d)) else ()


def in_per_group(base: nn.Module) -> int:
    """The input width the factors cover: in_features, or in_channels / groups."""
    if isinstance(base, (nn.Conv1d, nn.Conv2d)):
        return base.in_channels // base.groups
    return base.in_features


def uses_cp(base: nn.Module, config) -> bool:
    """Whether the kernel gets PEFT's CP ("effective conv2d") decomposition: asked for, and a kernel larger
    than 1 (a pointwise conv is a matmul: PEFT flattens it like a Linear)."""
    return bool(config.use_effective_conv2d) and any(k != 1 for k in kernel(base))


def kernel_numel(base: nn.Module) -> int:
    return math.prod(kernel(base))


def conv_delta(base: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The delta's output: x convolved with ΔW as the base convolves (no bias: the base added it)."""
    conv = F.conv1d if isinstance(base, nn.Conv1d) else F.conv2d
    return conv(x, weight, stride=base.stride, padding=base.padding, dilation=base.dilation, groups=base.groups)
