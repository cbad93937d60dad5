"""Fused training kernels for a LoRA / DoRA Linear: the base matmul and the adapter in one autograd node.

Autograd over the plain expression `base(x) + s * B(A(x))` spends two extra passes over the (tokens x out)
activations forward (`* s`, `+`) and two backward (the grad of `* s`, and summing the base and adapter
gradients of x over (tokens x in)). Written by hand, all of these fold into the GEMMs:

    forward   y  = addmm(x W^T, h, B^T, alpha=s)              h = x A^T           (tokens x r)
    backward  gh = s * g B                                     (tokens x r: the cheap side gets the scale)
              dB = s * g^T h,   dA = gh^T x,   dx = addmm(g W, gh, A)

Saved: x (shared by the layers reading the same input: q/k/v, gate/up), h and the factors.

LoRA dropout (an nn.Dropout, its p and training read at each forward, so TRL's p = 0 switches it off):
the node draws x_d = F.dropout(x, p) itself and keeps the mask as bits (CPU) or the generator state to draw it
again (CUDA) (dropout.py), instead of x_d and dropout's noise (2 x tokens x in elements):

    forward   h = x_d A^T,  y = addmm(x W^T, h, B^T, alpha=s)
    backward  x_d, back = replay(x, mask);   dA = gh^T x_d,   dx = g W + back(gh A)      (back(t) = t * noise)

The masks are nn.Dropout's own (same generator, same draws: bit-identical to PEFT's for a seed). A dropout
module the replay does not cover (not a plain nn.Dropout, p = 1, another device) runs as before: x_d is made
outside and is an input of the node. float32 factors on a bf16/fp16 base (autocast_adapter_dtype) run
`_LoraLinearMixed`, PEFT's mixed-precision arithmetic: it keeps the half-precision x and makes its float32
copy again in backward (PEFT keeps one float32 copy per layer). DoRA's nodes are in fused_dora.py. A base
with hooks, several active adapters and autocast take the generic path in layer.py, which gives the same
values.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.nn.modules import module as _module_globals

from ...graph.kinds import is_conv1d
from .dropout import draw, dropout_p, replay
from .fused_dora import _DoraDropLinear, _DoraLinear, _DoraLinearMixed, _factor_grads


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
    p = dropout_p(f.dropout, x2d)     # 0: no dropout; None: the module runs outside the node
    if f.use_dora:
        magnitude = layer._modules["lora_magnitude_vector"]._modules[f.name]
        m = magnitude._parameters["weight"]
        if m.dtype != f.A.dtype or p is None:
            return None
        norm = magnitude.row_norm(layer, f.name, layer._modules["base_layer"].weight).to(m.dtype)
        if p:
            out = _DoraDropLinear.apply(x2d, f.weight, f.bias, f.A, f.B, m, norm, f.scaling, p)
        else:
            dora = _DoraLinearMixed if f.mixed else _DoraLinear
            out = dora.apply(x2d, f.weight, f.bias, f.A, f.B, m, norm, f.scaling)
    else:
        x_d = None
        if p is None:   # PEFT drops out x's float32 copy on a half base: autograd carries dx_d back through both
            x_d = f.dropout(x2d.float() if f.mixed else x2d)
        lora = _LoraLinearMixed if f.mixed else _LoraLinear
        out = lora.apply(x2d, f.weight, f.bias, f.A, f.B, f.scaling, x_d, p or 0.0)
    return out.view(*x.shape[:-1], out.shape[-1])


def _lora_backward(g, x, x_in, h, weight, A, B, s, needs, back=None):
    """Gradients of y = x W^T + s (x_in A^T) B^T for output grad g: (dx, dx_d, dW, dA, dB); needs: which of
    (x, W, A, B, x_d) want one. x_in is x itself, or the dropped x: replayed (back carries its gradient into dx)
    or an input of the node (dx_d)."""
    need_x, need_w, need_a, need_b, need_xd = needs
    need_xd = need_xd and x_in is not x and back is None
    gh, dA, dB = _factor_grads(g, x_in, h, A, B, s, need_x or need_xd, need_a, need_b)
    dW = torch.mm(g.t(), x) if need_w else None
    dx = torch.mm(g, weight) if need_x else None
    dx_d = None
    if need_x and x_in is x:
        dx = dx.addmm_(gh, A)
    elif need_x and back is not None:
        dx = dx.add_(back(torch.mm(gh, A)))
    if need_xd:
        dx_d = torch.mm(gh, A)
    return dx, dx_d, dW, dA, dB


def lora_forward(ctx, x, weight, bias, A, B, s, x_d, p):
    """y = x W^T (+ b) + s (x_in A^T) B^T for the plain-LoRA nodes: x_in is x, the dropped x_d made outside, or
    (p > 0) x dropped here, its mask kept in ctx.drop and the returned bits. (y, h, bits)."""
    ctx.drop = bits = None
    if p:
        x_in, ctx.drop, bits = draw(x, p)
    else:
        x_in = x if x_d is None else x_d
    h = torch.mm(x_in, A.t())
    del x_in
    y = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())
    return y.addmm_(h, B.t(), alpha=s), h, bits


class _LoraLinear(torch.autograd.Function):
    """x_d: a dropped input made outside (or None); p > 0: the node draws and replays the dropout itself."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, s, x_d, p=0.0):
        y, h, bits = lora_forward(ctx, x, weight, bias, A, B, s, x_d, p)
        ctx.save_for_backward(x, x_d, h, weight, A, B, bits)
        ctx.s = s
        return y

    @staticmethod
    def backward(ctx, g):
        x, x_d, h, weight, A, B, bits = ctx.saved_tensors
        back = None
        if ctx.drop is not None:
            x_d, back = replay(x, ctx.drop, bits)
        g = g.contiguous()
        needs = tuple(ctx.needs_input_grad[i] for i in (0, 1, 3, 4, 6))
        dx, dx_d, dW, dA, dB = _lora_backward(g, x, x if x_d is None else x_d, h, weight, A, B, ctx.s, needs, back)
        dbias = g.sum(0) if ctx.needs_input_grad[2] else None
        return dx, dW, dbias, dA, dB, None, dx_d, None


class _LoraLinearMixed(torch.autograd.Function):
    """A half-precision base (x, W, b in bf16/fp16) with float32 factors, computed as PEFT does it (the base
    GEMM in the half dtype, the adapter at float32, the sum rounded to the half dtype once; backward: the
    adapter's x-gradient rounded to the half dtype, then added to the base's), without autograd's separate
    passes for the scale, the promotion and the casts of the sum. Keeps the half x, not its float32 copy
    (remade in backward: an exact cast); the dropout (p > 0) is drawn on that float32 copy, as PEFT's."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, s, x_d, p=0.0):
        y = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())
        ctx.drop = bits = None
        if p:
            xf, ctx.drop, bits = draw(x.float(), p)
        else:
            xf = x.float() if x_d is None else x_d     # x_d: dropout of x's float32 copy, made outside
        h = torch.mm(xf, A.t())
        del xf
        out = y.float().addmm_(h, B.t(), alpha=s).to(x.dtype)
        ctx.save_for_backward(x if x_d is None or ctx.needs_input_grad[1] else None, x_d, h, weight, A, B, bits)
        ctx.s = s
        return out

    @staticmethod
    def backward(ctx, g):
        x, x_d, h, weight, A, B, bits = ctx.saved_tensors
        s = ctx.s
        need_x, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        need_xd = x_d is not None and ctx.needs_input_grad[6]
        back = None
        if ctx.drop is not None:
            x_in, back = replay(x.float(), ctx.drop, bits)
        elif x_d is not None:
            x_in = x_d
        else:
            x_in = x.float() if need_a else None
        g = g.contiguous()
        gh, dA, dB = _factor_grads(g.float(), x_in, h, A, B, s, need_x or need_xd, need_a, need_b)
        del x_in
        dW = torch.mm(g.t(), x) if need_w else None
        dx = torch.mm(g, weight) if need_x else None
        dx_d = torch.mm(gh, A) if need_xd else None
        if need_x and x_d is None:
            t = torch.mm(gh, A)
            dx = dx.add_((t if back is None else back(t)).to(g.dtype))
        dbias = g.sum(0) if need_bias else None
        return dx, dW, dbias, dA, dB, None, dx_d, None
