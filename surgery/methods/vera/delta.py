"""The adapter's share of a VeRA layer's output, as one autograd node over 2-D (tokens, features) views:

    forward    h = x_d A^T (tokens x r),   z = (λ_d ⊙ h) B^T (tokens x out),   y = base + λ_b ⊙ z   (one addcmul)
    backward   dλ_b = Σ_tokens g ⊙ z,   g_h = g (λ_b ⊙ B)   (λ_b folded into the small (out, r) B: no g ⊙ λ_b pass),
               dλ_d = Σ_tokens g_h ⊙ h,   dx_d = (λ_d ⊙ g_h) A,   dbase = g

Autograd over the plain expression spends three more passes over (tokens x out) (λ_b ⊙ z, the sum, g ⊙ λ_b); these
are the values PEFT computes, in the same order up to float rounding. The projections are frozen buffers: no
gradient. A base output in another dtype (a half-precision base under float32 lambdas) is promoted first and its
gradient cast back, PEFT's arithmetic.
"""
from __future__ import annotations

import torch


class VeraDelta(torch.autograd.Function):
    @staticmethod
    def forward(ctx, base_out, x_d, A, B, lambda_d, lambda_b):
        h = torch.mm(x_d, A.t())
        z = torch.mm(h * lambda_d, B.t())
        ctx.save_for_backward(h, z, A, B, lambda_d, lambda_b)
        ctx.base_dtype = base_out.dtype
        return torch.addcmul(base_out.to(z.dtype), z, lambda_b)

    @staticmethod
    def backward(ctx, g):
        h, z, A, B, lambda_d, lambda_b = ctx.saved_tensors
        need_base, need_x, _, _, need_d, need_b = ctx.needs_input_grad
        g = g.contiguous()
        d_lambda_b = (g * z).sum(0) if need_b else None
        d_base = g.to(ctx.base_dtype) if need_base else None
        d_lambda_d = dx = None
        if need_x or need_d:
            g_h = torch.mm(g, B * lambda_b.unsqueeze(1))
            d_lambda_d = (g_h * h).sum(0) if need_d else None
            dx = torch.mm(g_h * lambda_d, A) if need_x else None
        return d_base, dx, None, None, d_lambda_d, d_lambda_b


def vera_output(base_out: torch.Tensor, x_d: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                lambda_d: torch.Tensor, lambda_b: torch.Tensor) -> torch.Tensor:
    """base_out + λ_b ⊙ ((λ_d ⊙ (x_d A^T)) B^T) for inputs of any leading shape."""
    out = VeraDelta.apply(base_out.reshape(-1, base_out.shape[-1]), x_d.reshape(-1, x_d.shape[-1]), A, B,
                          lambda_d, lambda_b)
    return out.view(*base_out.shape[:-1], out.shape[-1])
