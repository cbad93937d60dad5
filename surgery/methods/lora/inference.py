"""Unmerged LoRA inference in one pass over the output: the adapter's product accumulated into the base's.

The generic forward computes  y = base(x) + (B (A x)) * s  as four tensors of tokens x out (the base output,
B's output, its scaled copy, the sum). Without gradients nothing needs them apart, so for one active plain
adapter on an nn.Linear / Conv1D base:

    y = base(x)                       (fresh: the layer owns it)
    y += s * (x A^T) B^T              one addmm_ into y: the product is never stored on its own

float32 only: the same value as the generic path up to the rounding of the scaled product (addmm applies alpha
inside the GEMM: within 1 ulp per element); in half precision PEFT rounds three times, which the generic path
reproduces bit for bit. Anything else -- gradients, DoRA, several or per-sample adapters, dropout in
training mode, a hooked or replaced module, autocast, a tensor scaling (hot-swap), factors of another dtype or
with a bias -- returns None and the generic path runs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .dropout import dropout_p
from .fused import _no_global_hooks, _plain_base


def _plain_factor(module: nn.Module) -> bool:
    return (type(module) is nn.Linear and module._parameters.get("bias") is None
            and not (module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__))


def inference_forward(layer, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The layer's no-grad output through the accumulate path, or None where the generic path must run."""
    if torch.is_grad_enabled():
        return None
    state = layer.__dict__
    active = state["_active_adapters"]
    if len(active) != 1 or state["_disable_adapters"] or state["merged_adapters"]:
        return None
    name = active[0]
    if state.get("_batch_adapters") is not None or name not in state["r"] or state["use_dora"][name]:
        return None
    scaling = state["scaling"][name]
    modules = layer._modules
    base = modules["base_layer"]
    if isinstance(scaling, torch.Tensor) or not _plain_base(base) or not _no_global_hooks():
        return None
    lora_A, lora_B = modules["lora_A"]._modules[name], modules["lora_B"]._modules[name]
    if not (_plain_factor(lora_A) and _plain_factor(lora_B)) or torch.is_autocast_enabled(x.device.type):
        return None
    A, B = lora_A._parameters["weight"], lora_B._parameters["weight"]
    if not (x.dtype == A.dtype == B.dtype == base._parameters["weight"].dtype == torch.float32):
        return None   # half precision: PEFT rounds B's output, the scaled copy and the sum; kept bit-equal there
    if dropout_p(modules["lora_dropout"]._modules[name], x) != 0.0:   # dropout in training mode
        return None
    result = base(x)
    if not result.is_contiguous():   # not seen from nn.Linear / Conv1D: the generic sum on it
        return layer._adapter_output(x, name, result)
    out2d = result.view(-1, result.shape[-1])
    out2d.addmm_(torch.mm(x.reshape(-1, x.shape[-1]), A.t()), B.t(), alpha=float(scaling))
    return result

