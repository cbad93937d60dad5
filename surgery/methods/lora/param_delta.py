"""LoRA on one nn.Parameter (PEFT's ParamWrapper): the factor layout, the delta, and the adapted weight.

A targeted parameter W is 2-D (out, in) or 3-D, a stack of E experts. For 3-D the layout comes from the module's
`is_transposed` flag (transformers' use_experts_implementation), as PEFT reads it:

    is_transposed:  W: (E, in, out)    in = W.shape[1], out = W.shape[2]      (gpt-oss)
    otherwise:      W: (E, out, in)    in = W.shape[2], out = W.shape[1]      (Qwen3-MoE, Mixtral: PEFT "swaps")
    2-D:            W: (out, in)       E = 1

One rank-r pair per expert, packed in one Linear pair (PEFT's layout, so checkpoints are interchangeable):

    lora_A.weight: (r E, in)     A_e = rows e r .. e r + r - 1            (expert-major)
    lora_B.weight: (out, r E)    B_e = columns e, e + E, e + 2E, ...      (rank-major: column j is rank j // E
                                                                           of expert j % E)
    delta[e] = s B_e A_e  (out, in),  or its transpose (in, out) for an is_transposed W

The adapted weight W' = W + sum_a delta_a is built with fused ops (baddbmm / addmm: W + s lhs @ rhs, lhs and
rhs each expert's factors in W's layout), not as a dense delta plus a sum: one dense tensor per forward, the one
autograd keeps for the module's own backward (its matmuls need W'), and only the small factors besides. Where
PEFT rounds instead (float32 factors on a half-precision W, except its one-adapter 3-D fold), the same
arithmetic as PEFT: each delta rounded to W's dtype, the deltas summed, then added; float8 W: summed in float32.
"""
from __future__ import annotations

import torch

# float8 weights: the sum is formed in float32 and rounded back, clamped to the format's range (as PEFT)
_LOW_PRECISION = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
                                                   "float8_e5m2fnuz", "float8_e8m0fnu") if hasattr(torch, n))
_COMPUTE = (torch.float16, torch.bfloat16, torch.float32)


def layout(shape: tuple, transposed: bool) -> tuple[int, int, int, bool]:
    """(experts, in, out, swapped) of a parameter of this shape; swapped: stored (E, out, in) (PEFT's flag)."""
    if len(shape) == 3:
        experts, first, second = shape
        return (experts, first, second, False) if transposed else (experts, second, first, True)
    if len(shape) == 2:
        return 1, shape[1], shape[0], False
    raise ValueError(f"lora.ParamWrapper was initialized with {len(shape)} dimensional Parameter, but only 2d and "
                     f"3d are supported.")


def expert_factors(A: torch.Tensor, B: torch.Tensor, experts: int, swapped: bool) -> tuple:
    """(lhs, rhs) with delta = s * lhs @ rhs, batched over experts in W's layout."""
    A3 = A.reshape(experts, -1, A.shape[-1])                         # (E, r, in)
    B3 = B.reshape(B.shape[0], -1, experts).permute(2, 0, 1)         # (E, out, r)
    return (B3, A3) if swapped else (A3.transpose(-2, -1), B3.transpose(-2, -1))


def delta(A: torch.Tensor, B: torch.Tensor, experts: int, swapped: bool, scaling) -> torch.Tensor:
    """The dense delta in W's layout, in the factors' dtype (PEFT's get_delta_weight before its cast)."""
    if experts == 1:
        return (B @ A) * scaling
    A3 = A.reshape(experts, -1, A.shape[-1])
    B3 = B.reshape(B.shape[0], -1, experts)
    return torch.einsum("o r e, e r i -> e o i" if swapped else "o r e, e r i -> e i o", B3, A3) * scaling


def delta_as_weight(A, B, experts: int, swapped: bool, scaling, weight: torch.Tensor) -> torch.Tensor:
    """The delta on W's device, rounded to W's dtype where W computes in it (float8 stays in the factors' dtype)."""
    d = delta(A, B, experts, swapped, scaling)
    return d.to(weight.device, weight.dtype) if weight.dtype in _COMPUTE else d.to(weight.device)


def adapted_weight(weight: torch.Tensor, terms: list, experts: int, swapped: bool) -> torch.Tensor:
    """W + the deltas of `terms` [(A, B, scaling), ...], computed in W's dtype (autocast off: the module
    receives its weight in the dtype it stored it in)."""
    with torch.autocast(device_type=weight.device.type, enabled=False):
        if weight.dtype in _LOW_PRECISION:
            total = sum(delta(A, B, experts, swapped, s).to(weight.device) for A, B, s in terms)
            info = torch.finfo(weight.dtype)
            return (weight.to(total.dtype) + total).clamp(min=info.min, max=info.max).to(weight.dtype)
        if not (experts > 1 and len(terms) == 1) and any(A.dtype != weight.dtype for A, _, _ in terms):
            # PEFT's arithmetic where the factors' dtype differs: each delta rounded to W's dtype, summed, added
            total = None
            for A, B, scaling in terms:
                d = delta_as_weight(A, B, experts, swapped, scaling, weight)
                total = d if total is None else total + d
            return weight + total
        out = weight   # fused: one baddbmm / addmm per adapter (PEFT's own fold for one adapter on 3-D)
        for A, B, scaling in terms:
            A, B = A.to(weight.dtype), B.to(weight.dtype)
            if torch.is_tensor(scaling):   # a hot-swappable scaling is a tensor; the ops' alpha is a number
                A, scaling = A * scaling.to(A.dtype), 1.0
            if experts == 1:
                out = torch.addmm(out, B, A, alpha=float(scaling))
            else:
                lhs, rhs = expert_factors(A, B, experts, swapped)
                out = torch.baddbmm(out, lhs, rhs, alpha=float(scaling))
        return out
