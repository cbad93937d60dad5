"""What kind of layer a module is: the one place that tells a Linear-like layer, transformers' Conv1D, a
convolution or an embedding apart, and reads its (in, out) sizes. Handler tables, all-linear matching,
parameter counts and the fused paths all ask here."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2 and kin): a Linear whose weight is stored (in, out)."""
    return isinstance(module, Conv1D)


def is_linear_like(module: nn.Module) -> bool:
    """nn.Linear or transformers' Conv1D: what PEFT's all-linear selects."""
    return isinstance(module, (nn.Linear, Conv1D))


def is_conv(module: nn.Module) -> bool:
    return isinstance(module, CONV_TYPES)


def weight_shape(module: nn.Module) -> tuple:
    """The shape of the module's `weight` (or of its first parameter; () when it has none). A Linear's is
    (out, in) even where the stored weight is packed (bitsandbytes' 4-bit layers subclass nn.Linear)."""
    if isinstance(module, nn.Linear):
        return (module.out_features, module.in_features)
    weight = getattr(module, "weight", None)
    if weight is None:
        weight = next(iter(p for p in module._parameters.values() if p is not None), None)
    return tuple(weight.shape) if weight is not None else ()


def in_out_features(module: nn.Module) -> Optional[tuple[int, int]]:
    """(in, out) of a Linear, Conv1D, convolution (channels) or embedding (vocabulary, width); else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        in_f, out_f = module.weight.shape
        return in_f, out_f
    if is_conv(module):
        return module.in_channels, module.out_channels
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    return None


def embed_scale(module: nn.Module):
    """The scalar an embedding's own forward multiplies its lookup by (Gemma's embed_scale), which a direct
    lookup skips; None when there is none (or it is not a scalar: PEFT reads int/float or one-element tensors)."""
    scale = getattr(module, "embed_scale", None)
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        return torch.tensor(scale, device=module.weight.device, dtype=module.weight.dtype)
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        return scale
    return None
