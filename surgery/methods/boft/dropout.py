"""BOFT's multiplicative dropout: while training, a fraction p of one factor's blocks become the identity.

One forward draws (from torch's default CPU generator, in PEFT's order, so a seeded run drops PEFT's blocks):
the factor n ~ U{0..N-1}, then a random permutation of the D blocks; the blocks whose permuted rank is below
int(p * D) are replaced by I in factor n. A replaced block passes no gradient to its R.
"""
from __future__ import annotations

import torch
from torch import nn


class MultiplicativeDropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, Q: torch.Tensor) -> torch.Tensor:
        """Q: (N, D, b, b) orthogonal blocks -> the same, some blocks of one factor set to the identity."""
        if not self.training:
            return Q
        n, d, b, _ = Q.shape
        factor = int(torch.randint(0, n, (1,)).item())
        dropped = torch.randperm(d) < int(self.p * d)
        mask = torch.zeros(n, d, dtype=torch.bool)
        mask[factor] = dropped
        eye = torch.eye(b, device=Q.device, dtype=Q.dtype)
        return torch.where(mask.to(Q.device)[:, :, None, None], eye, Q)

    def extra_repr(self) -> str:
        return f"p={self.p}"
