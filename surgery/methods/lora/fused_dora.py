"""Fused DoRA training nodes (fused.py runs them): backward rebuilds what it needs instead of keeping it.

n = ||W + s B A||_row (detached, as in the paper and PEFT), m the magnitude, c = m / n, h = x A^T:

DoRA, float32 (and a half base with half factors): two nodes, the GEMMs and the row scale
    forward   y = x W^T + s h B^T             (_DoraGemm: keeps x, h, the factors)
              out = c * y (+ b)  in place     (_DoraScale: keeps out, the node's own output)
    backward  dm = sum_t(g * y) / n = sum_t(g * (out - b)) / (c n),   gy = g * c,  then LoRA's backward on gy
    Keeping out costs nothing where a neighbour keeps it anyway (Llama: gate_proj's, kept by SiLU, and
    up_proj's, by the product; q/k/v/o/down pay for theirs, measured with CPU attention), where before the
    node kept y, a tokens x out tensor, for every layer. The sum is taken at float32 at least: from a half
    out this is closer to the exact dm than PEFT's (0.0030 vs 0.0045 relative, bf16, 512 x 512, measured).
    Where out cannot give y -- a later op changed it in place (ReLU(inplace=True)), or c = 0 on some row --
    _DoraScale leaves dm to _DoraGemm, which recomputes y = x W^T + s h B^T (one GEMM, only then); the switch
    KEEP_OUTPUT = False always does, trading that GEMM for the tokens x out bytes of the unshared outputs.
DoRA, float32 factors on a half base (_DoraLinearMixed, PEFT's mixed arithmetic): y = half(x W^T) + s h B^T at
    float32, out = half(c y + b). A y rebuilt from the half out would double dm's error (measured 1.7x PEFT's
    for bf16, 2.4x for fp16), so the node keeps the half base product half(x W^T) (2 bytes per element; the
    float32 y and x's float32 copy, 8, are gone) and x itself (shared by q/k/v and gate/up), and rebuilds y
    with the rank-r product.
DoRA with dropout (_DoraDropLinear; PEFT recomputes the base on the dropped input x_d = dropout(x)):
    forward   out = (x W^T + b) + (c - 1) * (x_d W^T) + c * (s h B^T),     h = x_d A^T
    backward  gz = g * c: LoRA's backward on gz with x_d;   dx = g W + back((g (c - 1)) W + gh A)
              dm = sum_t(g * z) / n,   z = x_d W^T + s h B^T recomputed (one GEMM: out gives no z; the
              switch KEEP_DROPPED_Z keeps z instead, trading tokens x out bytes a layer for the GEMM; under
              gradient checkpointing the recomputed forward keeps it: no GEMM, and held one segment only)
    x_d is rebuilt from x and the mask's bits or RNG state (dropout.py): the node keeps x, h, the factors and
    1 bit per element of x (CPU; nothing on CUDA). With a half base and float32 factors, x_d, W and the
    adapter are float32 (PEFT's), the base term half.
"""
from __future__ import annotations

import torch

from .dropout import draw, replay


def _factor_grads(g, x_in, h, A, B, s, need_gh: bool, need_a: bool, need_b: bool):
    """The low-rank part of every backward here, for output grad g of s (x_in A^T) B^T: gh = s g B (the grad
    at h, for dx and dA), dA = gh^T x_in, dB = s g^T h; each only when needed. (gh, dA, dB)."""
    gh = torch.mm(g, B).mul_(s) if (need_gh or need_a) else None
    dB = torch.mm(g.t(), h).mul_(s) if need_b else None
    dA = torch.mm(gh.t(), x_in) if need_a else None
    return gh, dA, dB


class _Link:
    """Carries the output gradient from _DoraScale to _DoraGemm when out could not give dm, and out's version
    as apply left it (checkpoint's hooks skip autograd's version check: _DoraScale compares it itself)."""
    __slots__ = ("g", "version")

    def __init__(self):
        self.g, self.version = None, None


def _unpacked_or_none(ctx):
    """ctx.saved_tensors, or None if a later in-place op changed one of them (autograd's version check)."""
    try:
        return ctx.saved_tensors
    except RuntimeError as error:
        if "inplace operation" not in str(error):
            raise
        return None


def _column_dot(g, t, compute_dtype) -> torch.Tensor:
    """sum over tokens of g * t, at compute_dtype (float32 at least)."""
    return (g.to(compute_dtype) * t.to(compute_dtype)).sum(0)


class _DoraGemm(torch.autograd.Function):
    """y = x W^T + s (x A^T) B^T; magnitude's gradient only when _DoraScale hands it over (link)."""

    @staticmethod
    def forward(ctx, x, weight, A, B, magnitude, norm, s, link):
        h = torch.mm(x, A.t())
        y = torch.mm(x, weight.t()).addmm_(h, B.t(), alpha=s)
        ctx.save_for_backward(x, h, weight, A, B, norm)
        ctx.s, ctx.link = s, link
        return y

    @staticmethod
    def backward(ctx, gy):
        x, h, weight, A, B, norm = ctx.saved_tensors
        s = ctx.s
        need_x, need_w, need_a, need_b, need_m = ctx.needs_input_grad[:5]
        g, ctx.link.g = ctx.link.g, None
        dm = None
        if g is not None and need_m:   # out could not give y: recompute it
            y = torch.mm(x, weight.t()).addmm_(h, B.t(), alpha=s)
            compute = torch.promote_types(y.dtype, torch.float32)
            dm = _column_dot(g, y, compute).div_(norm.to(compute)).to(norm.dtype)
        gy = gy.contiguous()
        gh, dA, dB = _factor_grads(gy, x, h, A, B, s, need_x, need_a, need_b)
        dW = torch.mm(gy.t(), x) if need_w else None
        dx = torch.mm(gy, weight).addmm_(gh, A) if need_x else None
        return dx, dW, dA, dB, dm, None, None, None


# DoRA without dropout: True keeps out (free where a neighbour keeps it; measured on the 45M Llama: saved 1.145x
# LoRA's, step 0.97x PEFT's); False recomputes y = x W^T + s h B^T in backward instead (saved 1.001x LoRA's, but
# one more base GEMM per layer: step 1.06x PEFT's). benchmarks/bench_memory.py and bench_train_step.py show both.
KEEP_OUTPUT = True


class _DoraScale(torch.autograd.Function):
    """out = (m / n) * y (+ b), in place on y; keeps out (its own output) and rebuilds y from it in backward."""

    @staticmethod
    def forward(ctx, y, magnitude, norm, bias, link):
        scale = magnitude / norm
        out = y.mul_(scale) if bias is None else torch.addcmul(bias, y, scale, out=y)
        ctx.mark_dirty(y)
        ctx.save_for_backward(out if KEEP_OUTPUT and ctx.needs_input_grad[1] else None)
        # not saved tensors: (out,) vectors that must survive a failed unpack of out
        ctx.scale, ctx.norm, ctx.bias, ctx.link = scale, norm, bias, link
        return out

    @staticmethod
    def backward(ctx, g):
        need_y, need_m, _, need_bias = ctx.needs_input_grad[:4]
        scale = ctx.scale
        dm = None
        if need_m:
            saved = _unpacked_or_none(ctx)
            if saved is None or saved[0] is None or saved[0]._version != ctx.link.version or not bool(scale.ne(0).all()):
                ctx.link.g = g          # out gives no y: _DoraGemm recomputes it
            else:
                out = saved[0] if ctx.bias is None else saved[0] - ctx.bias
                compute = torch.promote_types(out.dtype, torch.float32)
                dm = _column_dot(g, out, compute).div_((scale * ctx.norm).to(compute)).to(scale.dtype)
        dbias = g.sum(0) if need_bias else None
        gy = g * scale if need_y else None
        return gy, dm, None, dbias, None


class _DoraLinear:
    """DoRA on a Linear of one dtype: _DoraGemm then _DoraScale (see the module docstring). apply(x, weight,
    bias, A, B, magnitude, norm, s) -> out, as one autograd.Function's apply would."""

    @staticmethod
    def apply(x, weight, bias, A, B, magnitude, norm, s):
        link = _Link()
        y = _DoraGemm.apply(x, weight, A, B, magnitude, norm, s, link)
        out = _DoraScale.apply(y, magnitude, norm, bias, link)
        link.version = out._version
        return out


class _DoraLinearMixed(torch.autograd.Function):
    """DoRA with float32 factors and magnitude on a half-precision base: the base GEMM in the half dtype, the
    rest at float32 (as PEFT), out = (m/n) * (W x + s B A x) + b rounded to the half dtype once."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, magnitude, norm, s):
        h = torch.mm(x.float(), A.t())
        base = torch.mm(x, weight.t())
        y = base.float().addmm_(h, B.t(), alpha=s)
        scale = magnitude / norm
        out = (y * scale if bias is None else torch.addcmul(bias.float(), y, scale)).to(x.dtype)
        ctx.save_for_backward(x, h, weight, A, B, base, scale, norm)
        ctx.s = s
        return out

    @staticmethod
    def backward(ctx, g):
        x, h, weight, A, B, base, scale, norm = ctx.saved_tensors
        s = ctx.s
        need_x, need_w, need_bias, need_a, need_b, need_m = ctx.needs_input_grad[:6]
        gf = g.float()
        if need_m:   # y exactly as forward made it
            y = base.float().addmm_(h, B.t(), alpha=s)
            dm = (gf * y).sum(0).div_(norm)
            del y
        else:
            dm = None
        dbias = g.sum(0) if need_bias else None
        gy = gf * scale
        gh, dA, dB = _factor_grads(gy, x.float() if need_a else None, h, A, B, s, need_x, need_a, need_b)
        gy_half = gy.to(g.dtype) if (need_x or need_w) else None
        dW = torch.mm(gy_half.t(), x) if need_w else None
        dx = torch.mm(gy_half, weight).add_(torch.mm(gh, A).to(g.dtype)) if need_x else None
        return dx, dW, dbias, dA, dB, dm, None, None


# DoRA with dropout: False recomputes z in backward (no tokens x out tensor kept; one more base GEMM, measured
# +7-13% on a step of the 45M Llama on the CPU); True keeps z for every layer (4 base GEMMs, as PEFT). Inside
# gradient checkpointing's recomputation z is always kept: it lives only until its own segment's backward.
KEEP_DROPPED_Z = False


_CHECKPOINT_HOOKS = ("_checkpoint_hook.", "_recomputation_hook.")   # torch.utils.checkpoint's saved-tensor hooks


def _checkpointed() -> bool:
    """Whether what is saved now lives one checkpoint segment at most: a forward run inside a backward pass (a
    reentrant recomputation) or under torch.utils.checkpoint's non-reentrant hooks (the first forward, whose
    saved tensors it drops, and the recomputation, which must save the same tensors)."""
    if torch._C._current_graph_task_id() != -1:
        return True
    hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    return hooks is not None and getattr(hooks[0], "__qualname__", "").startswith(_CHECKPOINT_HOOKS)


class _DoraDropLinear(torch.autograd.Function):
    """DoRA with a replayed dropout (see the module docstring); float32 factors on a half base compute the
    adapter side (x_d, x_d W^T, B A x_d) at float32, as PEFT."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, magnitude, norm, s, p):
        result = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())
        xa = x.to(A.dtype)                      # the adapter's dtype (a copy only on a half base)
        x_d, ctx.drop, bits = draw(xa, p)
        wa = weight.to(A.dtype)
        h = torch.mm(x_d, A.t())
        scale = magnitude / norm
        # generic-path order: result + (c - 1) * (x_d W^T) + c * (s * B A x_d)
        base_d = torch.mm(x_d, wa.t())
        lora = torch.mm(h, B.t()).mul_(s)
        z = base_d + lora if (KEEP_DROPPED_Z or _checkpointed()) and ctx.needs_input_grad[5] else None
        del x_d, wa
        out = base_d.mul_(scale - 1)
        out = out.add_(result) if out.dtype != result.dtype else result.add_(out)
        out.add_(lora.mul_(scale))
        ctx.save_for_backward(x, h, weight, A, B, scale, norm, bits, z)
        ctx.s = s
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, h, weight, A, B, scale, norm, bits, z = ctx.saved_tensors
        s = ctx.s
        need_x, need_w, need_bias, need_a, need_b, need_m = ctx.needs_input_grad[:6]
        g = g.contiguous()
        ga = g.to(A.dtype)
        x_d, back = replay(x.to(A.dtype), ctx.drop, bits)
        wa = weight.to(A.dtype)
        dm = None
        if need_m:   # z = x_d W^T + s B A x_d, kept or recomputed
            if z is None:
                z = torch.mm(x_d, wa.t()).addmm_(h, B.t(), alpha=s)
            dm = (ga * z).sum(0).div_(norm)
            del z
        gz = ga * scale
        gh, dA, dB = _factor_grads(gz, x_d, h, A, B, s, need_x, need_a, need_b)
        del gz
        g_base = ga * (scale - 1) if (need_x or need_w) else None    # the dropped base term's output gradient
        dx = dW = None
        if need_x:
            dx = torch.mm(g, weight).add_(back(torch.mm(g_base, wa).addmm_(gh, A)).to(g.dtype))
        if need_w:
            dW = torch.mm(g.t(), x).add_(torch.mm(g_base.t(), x_d).to(weight.dtype))
        dbias = g.sum(0) if need_bias else None
        return dx, dW, dbias, dA, dB, dm, None, None, None
