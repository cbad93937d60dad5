"""Fused training kernels for a LoRA / DoRA Linear: the base matmul and the adapter in one autograd node.

Autograd over the plain expression `base(x) + s * B(A(x))` spends two extra passes over the (tokens x out)
activations forward (`* s`, `+`) and two backward (the grad of `* s`, and summing the base and adapter
gradients of x over (tokens x in)). Written by hand, all of these fold into the GEMMs:

    forward   y  = addmm(x W^T, h, B^T, alpha=s)              h = x A^T           (tokens x r)
    backward  gh = s * g B                                     (tokens x r: the cheap side gets the scale)
              dB = s * g^T h,   dA = gh^T x,   dx = addmm(g W, gh, A)

DoRA (n = ||W + s B A||_row, detached as in the paper and PEFT; m the magnitude):

    forward   out = (m / n) * y  (+ bias)
    backward  dm = sum_tokens(g * y) / n,   gy = g * (m / n),   then the LoRA backward on gy

With LoRA dropout the adapter reads x_d = dropout(x) (the module runs as usual, so the random stream is
the same as on the generic path) and autograd carries dx_d back through the dropout mask. float32 factors on
a bf16/fp16 base (autocast_adapter_dtype) run `_LoraLinearMixed` / `_DoraLinearMixed`, PEFT's mixed-precision
arithmetic. DoRA with dropout, a base with hooks, several active adapters and autocast take the generic path in
layer.py, which gives the same values.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.nn.modules import module as _module_globals

from ...graph.kinds import is_conv1d
from .layer import _NO_DROPOUT


def _plain_base(base: nn.Module) -> bool:
    """A base whose forward is exactly x W^T + b, with nothing hooked on it."""
    if type(base) is not nn.Linear and not is_conv1d(base):
        return False
    if type(base._parameters["weight"]) not in (nn.Parameter, torch.Tensor):   # a quantized tensor subclass
        return False
    return not (base._forward_hooks or base._forward_pre_hooks or "forward" in base.__dict__)


def _no_global_hooks() -> bool:
    return not (_module_globals._global_forward_hooks or _module_globals._global_forward_pre_hooks)


class Factors(NamedTuple):
    """What the fused kernels need from one layer's active adapter."""
    name: str
    weight: torch.Tensor            # the base weight as (out, in)
    bias: Optional[torch.Tensor]
    A: torch.Tensor
    B: torch.Tensor
    scaling: float
    dropout: nn.Module
    use_dora: bool
    mixed: bool                     # float32 factors on a half-precision base (autocast_adapter_dtype)


def training_adapter(layer) -> Optional[str]:
    """The one adapter a fused training node would run for this layer now (None: the generic path runs).

    Runs on every training step of every adapted layer, so it reads the modules' own dicts instead of going
    through nn.Module.__getattr__ (about half of the fused paths' checking time otherwise)."""
    state = layer.__dict__
    active = state["_active_adapters"]
    if not (state["training"] and torch.is_grad_enabled()) or len(active) != 1:
        return None
    if state["_disable_adapters"] or state["merged_adapters"] or state.get("_batch_adapters") is not None:
        return None
    return active[0] if active[0] in state["r"] else None


def fusable(layer, x: torch.Tensor) -> Optional[Factors]:
    """The layer's factors when its training step can run fused on input x, else None."""
    name = training_adapter(layer)
    if name is None:
        return None
    state = layer.__dict__
    modules = layer._modules
    dropout = modules["lora_dropout"]._modules[name]
    use_dora = state["use_dora"][name]
    if dropout is not _NO_DROPOUT and use_dora:
        return None
    base = modules["base_layer"]
    if not _plain_base(base) or not _no_global_hooks() or torch.is_autocast_enabled(x.device.type):
        return None
    A, B = modules["lora_A"]._modules[name]._parameters, modules["lora_B"]._modules[name]._parameters
    base_weight, A, B_bias, B = base._parameters["weight"], A["weight"], B.get("bias"), B["weight"]
    if B_bias is not None or A.dtype != B.dtype or x.dtype != base_weight.dtype:
        return None
    mixed = A.dtype != x.dtype
    if mixed and not (A.dtype == torch.float32 and x.dtype in (torch.bfloat16, torch.float16)):
        return None
    scaling = state["scaling"][name]
    if isinstance(scaling, torch.Tensor):   # hot-swappable (a tensor a compiled graph reads): the generic path
        return None
    weight = base_weight.T if state["fan_in_fan_out"] else base_weight
    return Factors(name, weight, base._parameters.get("bias"), A, B, float(scaling), dropout, use_dora, mixed)


def fused_forward(layer, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The layer's training output through one fused node, or None where the generic path must run."""
    f = fusable(layer, x)
    if f is None:
        return None
    x2d = x.reshape(-1, x.shape[-1])
    if f.use_dora:
        magnitude = layer._modules["lora_magnitude_vector"]._modules[f.name]
        m = magnitude._parameters["weight"]
        if m.dtype != f.A.dtype:
            return None
        norm = magnitude.row_norm(layer, f.name, layer._modules["base_layer"].weight).to(m.dtype)
        dora = _DoraLinearMixed if f.mixed else _DoraLinear
        out = dora.apply(x2d, f.weight, f.bias, f.A, f.B, m, norm, f.scaling)
    elif f.mixed:   # PEFT drops out the float32 copy of x: autograd carries dx_d back through both
        x_d = None if f.dropout is _NO_DROPOUT else f.dropout(x2d.float())
        out = _LoraLinearMixed.apply(x2d, f.weight, f.bias, f.A, f.B, f.scaling, x_d)
    else:
        x_d = None if f.dropout is _NO_DROPOUT else f.dropout(x2d)
        out = _LoraLinear.apply(x2d, f.weight, f.bias, f.A, f.B, f.scaling, x_d)
    return out.view(*x.shape[:-1], out.shape[-1])


def _factor_grads(g, x_in, h, A, B, s, need_gh: bool, need_a: bool, need_b: bool):
    """The low-rank part of every backward here, for output grad g of s (x_in A^T) B^T: gh = s g B (the grad
    at h, for dx and dA), dA = gh^T x_in, dB = s g^T h; each only when needed. (gh, dA, dB)."""
    gh = torch.mm(g, B).mul_(s) if (need_gh or need_a) else None
    dB = torch.mm(g.t(), h).mul_(s) if need_b else None
    dA = torch.mm(gh.t(), x_in) if need_a else None
    return gh, dA, dB


def _lora_backward(ctx, g: torch.Tensor, x, x_d, h, weight, A, B, s):
    """Gradients of y = x W^T + s (x_d A^T) B^T for output grad g: (dx, dx_d, dW, dA, dB).
    x_d None means the adapter read x itself, and its x-gradient is folded into dx."""
    need_x, need_w, need_a, need_b = (ctx.needs_input_grad[i] for i in (0, 1, 3, 4))
    need_xd = x_d is not None and ctx.needs_input_grad[6]
    gh, dA, dB = _factor_grads(g, x if x_d is None else x_d, h, A, B, s, need_x or need_xd, need_a, need_b)
    dW = torch.mm(g.t(), x) if need_w else None
    dx = torch.mm(g, weight) if need_x else None
    dx_d = None
    if x_d is None:
        dx = dx.addmm_(gh, A) if need_x else None
    elif need_xd:
        dx_d = torch.mm(gh, A)
    return dx, dx_d, dW, dA, dB


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, A, B, s, x_d):
        h = torch.mm(x if x_d is None else x_d, A.t())
        y = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())
        y = y.addmm_(h, B.t(), alpha=s)
        ctx.save_for_backward(x, x_d, h, weight, A, B)
        ctx.s = s
        return y

    @staticmethod
    def backward(ctx, g):
        x, x_d, h, weight, A, B = ctx.saved_tensors
        g = g.contiguous()
        dx, dx_d, dW, dA, dB = _lora_backward(ctx, g, x, x_d, h, weight, A, B, ctx.s)
        dbias = g.sum(0) if ctx.needs_input_grad[2] else None
        return dx, dW, dbias, dA, dB, None, dx_d


class _DoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, A, B, magnitude, norm, s):
        h = torch.mm(x, A.t())
        y = torch.mm(x, weight.t()).addmm_(h, B.t(), alpha=s)    # W x + s B A x
        scale = magnitude / norm
        out = y * scale if bias is None else torch.addcmul(bias, y, scale)
        ctx.save_for_backward(x, h, weight, A, B, y, scale, norm)
        ctx.s = s
        return out

    @staticmethod
    def backward(ctx, g):
        x, h, weight, A, B, y, scale, norm = ctx.saved_tensors
        g = g.contiguous()
        dm = (g * y).sum(0).div_(norm) if ctx.needs_input_grad[5] else None
        dbias = g.sum(0) if ctx.needs_input_grad[2] else None
        gy = g * scale
        dx, _, dW, dA, dB = _lora_backward(ctx, gy, x, None, h, weight, A, B, ctx.s)
        return dx, dW, dbias, dA, dB, dm, None, None


class _LoraLinearMixed(torch.autograd.Function):
    """A half-precision base (x, W, b in bf16/fp16) with float32 factors, computed as PEFT does it (the base
    GEMM in the half dtype, the adapter at float32, the sum rounded to the half dtype once; backward: the
    adapter's x-gradient rounded to the half dtype, then added to the base's), without autograd's separate
    passes for the scale, the promotion and the casts of the sum."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, s, x_d):
        y = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())
        xf = x.float() if x_d is None else x_d     # x_d: dropout of x's float32 copy, made outside
        h = torch.mm(xf, A.t())
        out = y.float().addmm_(h, B.t(), alpha=s).to(x.dtype)
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, xf, h, weight, A, B)
        ctx.s, ctx.dropped = s, x_d is not None
        return out

    @staticmethod
    def backward(ctx, g):
        x, xf, h, weight, A, B = ctx.saved_tensors
        s = ctx.s
        need_x, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        need_xd = ctx.dropped and ctx.needs_input_grad[6]
        g = g.contiguous()
        gh, dA, dB = _factor_grads(g.float(), xf, h, A, B, s, need_x or need_xd, need_a, need_b)
        dW = torch.mm(g.t(), x) if need_w else None
        dx = torch.mm(g, weight) if need_x else None
        dx_d = torch.mm(gh, A) if need_xd else None
        if need_x and not ctx.dropped:
            dx = dx.add_(torch.mm(gh, A).to(g.dtype))
        dbias = g.sum(0) if need_bias else None
        return dx, dW, dbias, dA, dB, None, dx_d


class _DoraLinearMixed(torch.autograd.Function):
    """DoRA with float32 factors and magnitude on a half-precision base: the base GEMM in the half dtype, the
    rest at float32 (as PEFT), out = (m/n) * (W x + s B A x) + b rounded to the half dtype once."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, magnitude, norm, s):
        xf = x.float()
        h = torch.mm(xf, A.t())
        y = torch.mm(x, weight.t()).float().addmm_(h, B.t(), alpha=s)
        scale = magnitude / norm
        out = (y * scale if bias is None else torch.addcmul(bias.float(), y, scale)).to(x.dtype)
        ctx.save_for_backward(xf, h, weight, A, B, y, scale, norm)
        ctx.s = s
        return out

    @staticmethod
    def backward(ctx, g):
        xf, h, weight, A, B, y, scale, norm = ctx.saved_tensors
        s = ctx.s
        need_x, need_w, need_bias, need_a, need_b, need_m = ctx.needs_input_grad[:6]
        gf = g.float()
        dm = (gf * y).sum(0).div_(norm) if need_m else None
        dbias = g.sum(0) if need_bias else None
        gy = gf * scale
        gh, dA, dB = _factor_grads(gy, xf, h, A, B, s, need_x, need_a, need_b)
        gy_half = gy.to(g.dtype) if (need_x or need_w) else None
        dW = torch.mm(gy_half.t(), xf.to(g.dtype)) if need_w else None
        dx = torch.mm(gy_half, weight).add_(torch.mm(gh, A).to(g.dtype)) if need_x else None
        return dx, dW, dbias, dA, dB, dm, None, None
