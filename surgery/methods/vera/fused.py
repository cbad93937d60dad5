"""A VeRA Linear / Conv1D training step in one autograd node, the base matmul included:

    forward   y = x W^T + b,  then in place  y += λ_b ⊙ z,   z = (λ_d ⊙ h) B^T,   h = x_d A^T
    backward  dλ_b = Σ_tokens g ⊙ z,  g_h = g (λ_b ⊙ B),  dλ_d = Σ_tokens g_h ⊙ h,
              dx = addmm(g W, λ_d ⊙ g_h, A)      (the adapter's x-gradient folded into the base's GEMM)

Beyond delta.py (the adapter alone, any base) this saves the separate (tokens x out) base output and the
(tokens x in) sum of the two x-gradients. It runs for one active adapter on a plain nn.Linear / Conv1D (no
hooks, no autocast) whose weight, input, lambdas and projections share one dtype; everything else takes the
generic path, which gives the same values. With dropout the adapter reads x_d = dropout(x) (run by the module
as usual) and autograd carries dx_d back through the mask.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.modules import module as _module_globals

from ...graph.kinds import is_conv1d


def _plain(base: nn.Module) -> bool:
    """A base whose forward is exactly x W^T + b, with nothing hooked on it (or on every module)."""
    if type(base) is not nn.Linear and not is_conv1d(base):
        return False
    if base._forward_hooks or base._forward_pre_hooks or "forward" in base.__dict__:
        return False
    return not (_module_globals._global_forward_hooks or _module_globals._global_forward_pre_hooks)


class _VeraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_d, weight_io, bias, A, B, lambda_d, lambda_b):
        y = torch.mm(x, weight_io) if bias is None else torch.addmm(bias, x, weight_io)
        h = torch.mm(x_d, A.t())
        z = torch.mm(h * lambda_d, B.t())
        y.addcmul_(z, lambda_b)
        ctx.dropped = x_d is not x
        ctx.save_for_backward(x if ctx.needs_input_grad[2] else None, weight_io, h, z, A, B, lambda_d, lambda_b)
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight_io, h, z, A, B, lambda_d, lambda_b = ctx.saved_tensors
        need_x, need_xd, need_w, need_bias, _, _, need_d, need_b = ctx.needs_input_grad
        g = g.contiguous()
        d_lambda_b = (g * z).sum(0) if need_b else None
        g_h = torch.mm(g, B * lambda_b.unsqueeze(1))
        d_lambda_d = (g_h * h).sum(0) if need_d else None
        g_a = g_h * lambda_d
        dx = torch.mm(g, weight_io.t()) if need_x else None
        dx_d = None
        if ctx.dropped:
            dx_d = torch.mm(g_a, A) if need_xd else None
        elif need_x:
            dx = dx.addmm_(g_a, A)
        d_weight = torch.mm(x.t(), g) if need_w else None
        d_bias = g.sum(0) if need_bias else None
        return dx, dx_d, d_weight, d_bias, None, None, d_lambda_d, d_lambda_b


def fused_forward(layer, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The layer's output through one fused node, or None where the generic path must run. Reads the modules'
    own dicts: it runs on every step of every adapted layer."""
    state = layer.__dict__
    active = state["_active_adapters"]
    if len(active) != 1 or state["_disable_adapters"] or state["merged_adapters"] or active[0] not in state["r"]:
        return None
    name = active[0]
    modules = layer._modules
    base = modules["base_layer"]
    if not _plain(base) or torch.is_autocast_enabled(x.device.type):
        return None
    lambda_d = modules["vera_lambda_d"]._parameters[name]
    lambda_b = modules["vera_lambda_b"]._parameters[name]
    weight, bias = base._parameters["weight"], base._parameters.get("bias")
    A = state["vera_A"][name]
    if not (x.dtype == weight.dtype == lambda_d.dtype == lambda_b.dtype == A.dtype) or A.device != x.device:
        return None
    A = A[:, : state["in_features"]]
    B = state["vera_B"][name][: state["out_features"]]
    x2d = x.reshape(-1, x.shape[-1])
    x_d = modules["vera_dropout"]._modules[name](x2d)
    weight_io = weight if state["fan_in_fan_out"] else weight.t()
    out = _VeraLinear.apply(x2d, x_d, weight_io, bias, A, B, lambda_d, lambda_b)
    return out.view(*x.shape[:-1], out.shape[-1])
