"""The fused QLoRA training node: dequantize, base matmul and adapter in one autograd node (4-bit bases).

bitsandbytes' own path for a 4-bit base computes y = x dequant(W_q)^T in its autograd node, and PEFT then adds
the adapter through four more (A, B, the scale, the sum) after cloning y. Here, as in fused.py:

    forward   W = dequant(W_q)                       (in the compute dtype; not kept for backward)
              y = addmm(x W^T (+ b), h, B^T, alpha=s)         h = x_d A^T
    backward  W = dequant(W_q) again (as bitsandbytes does: a 4-bit model never holds its dense weights)
              gh = s g B,  dB = s g^T h,  dA = gh^T x_d,  dx = addmm(g W, gh, A)

Saved for backward: x (for dA), h (tokens x r) and the factors: no dense weight, no extra (tokens x out)
tensor. With dropout the node draws nn.Dropout's mask itself and keeps x plus the mask (1 bit per element on
the CPU, the generator state on CUDA; dropout.py), not the dropped x and dropout's noise:
    backward  x_d, back = replay(x, mask),   dA = gh^T x_d,   dx = g W + back(gh A) Runs for one active plain-LoRA adapter in training, with input, compute dtype and factors all the
same dtype; anything else (DoRA, several adapters, autocast, hooks) takes the generic path, same values.
"""
from __future__ import annotations

from typing import Optional

import torch

from ...quantized import backend_of
from .dropout import dropout_p, replay
from .fused import _factor_grads, _no_global_hooks, lora_forward, training_adapter
from .layer import _NO_DROPOUT


def fused_quantized_forward(layer, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The layer's training output through one fused node, or None where the generic path must run."""
    name = training_adapter(layer)
    state = layer.__dict__
    if name is None or state["use_dora"][name] or isinstance(state["scaling"][name], torch.Tensor):
        return None   # DoRA, or a hot-swappable tensor scaling: the generic path
    base = layer._modules["base_layer"]
    backend = backend_of(base)
    if backend is None or base._forward_hooks or base._forward_pre_hooks or "forward" in base.__dict__:
        return None
    if not _no_global_hooks() or torch.is_autocast_enabled(x.device.type):
        return None
    lora_A, lora_B = layer._modules["lora_A"]._modules[name], layer._modules["lora_B"]._modules[name]
    A, B = lora_A._parameters["weight"], lora_B._parameters["weight"]
    if lora_B._parameters.get("bias") is not None or not (A.dtype == B.dtype == x.dtype == backend.compute_dtype(base)):
        return None
    bias = base._parameters.get("bias")
    if bias is not None and bias.dtype != x.dtype:
        return None
    dropout = layer._modules["lora_dropout"]._modules[name]
    x2d = x.reshape(-1, x.shape[-1])
    p = 0.0 if dropout is _NO_DROPOUT else dropout_p(dropout, x2d)   # None: the module runs outside the node
    x_d = dropout(x2d) if p is None else None
    out = _QuantizedLora.apply(x2d, bias, A, B, float(state["scaling"][name]), x_d, layer, p or 0.0)
    return out.view(*x.shape[:-1], out.shape[-1])


class _QuantizedLora(torch.autograd.Function):
    """x_d: a dropped input made outside (or None); p > 0: the node draws and replays the dropout itself."""

    @staticmethod
    def forward(ctx, x, bias, A, B, s, x_d, layer, p=0.0):
        y, h, bits = lora_forward(ctx, x, layer.dense_base_weight().to(x.dtype), bias, A, B, s, x_d, p)
        keep_x = ctx.needs_input_grad[2] or (p and ctx.needs_input_grad[0])
        ctx.save_for_backward(x if keep_x and x_d is None else None, x_d if ctx.needs_input_grad[2] else None,
                              h, A, B, bits)
        ctx.s, ctx.layer = s, layer
        return y

    @staticmethod
    def backward(ctx, g):
        x, x_d, h, A, B, bits = ctx.saved_tensors
        need_x, need_bias, need_a, need_b = (ctx.needs_input_grad[i] for i in (0, 1, 2, 3))
        back = None
        if ctx.drop is not None and x is not None:   # x is None: only the bias wants a gradient
            x_d, back = replay(x, ctx.drop, bits)
        x_in = x if x_d is None else x_d
        need_xd = x_d is not None and back is None and ctx.needs_input_grad[5]
        g = g.contiguous()
        gh, dA, dB = _factor_grads(g, x_in, h, A, B, ctx.s, need_x or need_xd, need_a, need_b)
        dx = dx_d = None
        if need_x:
            dx = torch.mm(g, ctx.layer.dense_base_weight().to(g.dtype))
            if back is not None:
                dx = dx.add_(back(torch.mm(gh, A)))
            elif x_d is None:
                dx = dx.addmm_(gh, A)
        if need_xd:
            dx_d = torch.mm(gh, A)
        dbias = g.sum(0) if need_bias else None
        return dx, dbias, dA, dB, None, dx_d, None, None
