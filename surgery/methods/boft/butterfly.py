"""The butterfly rotation as index shuffles and batched block products: no dense (F x F) matrix is ever built.

One adapter holds R: (N, D, b, b), N butterfly factors of D blocks of size b (D * b = F, the rotated size).

    Q_i,d = cayley(R_i,d) = (I - S)(I + S)^-1,  S = (R - R^T) / 2         orthogonal b x b blocks
    M_i   = P_i · blockdiag(Q_i,0 .. Q_i,D-1) · P_i^T                       factor i (F x F, never formed)
    M     = M_N-1 ⋯ M_1 · M_0                                               the adapter's rotation

P_i is the butterfly permutation of level i (PEFT's perm2mat(block_butterfly_perm(...)), with P x = x[p]):
inside every chunk of b * 2**i features, the b/2-wide groups are reordered evens first, odds after, which is
a reshape (2**i, 2, b/2) -> transpose -> (2, 2**i, b/2). Level 0 is the identity.

A row vector x is rotated as x @ M (the layer input) or x @ M^T (the rows of a weight, W M^T):

    x @ M_i   = shuffle(blocks(unshuffle(x)) @ Q_i)       x P_i = x[..., p^-1] = unshuffle(x), z P_i^T = shuffle(z)
    x @ M_i^T = shuffle(blocks(unshuffle(x)) @ Q_i^T)
"""
from __future__ import annotations

import torch


def cayley(R: torch.Tensor) -> torch.Tensor:
    """Orthogonal blocks from free ones: (..., b, b) -> (..., b, b), in R's dtype (the identity at R = 0)."""
    skew = 0.5 * (R - R.transpose(-1, -2))
    # solved in float32 at least, as PEFT (torch has no half-precision solve on CPU, and it is more exact)
    eye = torch.eye(R.shape[-1], device=R.device, dtype=torch.promote_types(R.dtype, torch.float32))
    eye = eye.expand(skew.shape)
    # X (I + S) = I - S; the factors commute, so X = (I + S)^-1 (I - S) as well (PEFT solves this side)
    return torch.linalg.solve(eye + skew, eye - skew, left=False).to(R.dtype)


def rotations(R: torch.Tensor) -> torch.Tensor:
    """Q = cayley(R) for every block of every factor: (N, D, b, b) -> (N, D, b, b)."""
    n, d, b, _ = R.shape
    return cayley(R.reshape(n * d, b, b)).reshape(n, d, b, b)


def _shuffle(x: torch.Tensor, level: int, block: int) -> torch.Tensor:
    """x[..., p] for the butterfly permutation p of `level` (groups of block/2 reordered evens-then-odds)."""
    if level == 0:
        return x
    lead, width = x.shape[:-1], x.shape[-1]
    groups = x.reshape(*lead, -1, 2 ** level, 2, block // 2)
    return groups.transpose(-3, -2).reshape(*lead, width)


def _unshuffle(x: torch.Tensor, level: int, block: int) -> torch.Tensor:
    """x[..., p^-1]: the inverse of _shuffle."""
    if level == 0:
        return x
    lead, width = x.shape[:-1], x.shape[-1]
    groups = x.reshape(*lead, -1, 2, 2 ** level, block // 2)
    return groups.transpose(-3, -2).reshape(*lead, width)


def block_product(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Each b-wide slice d of x's last dimension times its own block: (..., D*b) x (D, b, b) -> (..., D*b)."""
    d, b, _ = q.shape
    lead = x.shape[:-1]
    return torch.einsum("...di,dij->...dj", x.reshape(*lead, d, b), q).reshape(*lead, d * b)


def rotate_rows(x: torch.Tensor, Q: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """x @ M (transpose=False) or x @ M^T (transpose=True) for the rotation M of blocks Q: (N, D, b, b)."""
    n, _, b, _ = Q.shape
    levels = range(n) if transpose else range(n - 1, -1, -1)   # M^T = M_0^T ⋯ M_N-1^T
    for level in levels:
        q = Q[level].transpose(-1, -2) if transpose else Q[level]
        x = _shuffle(block_product(_unshuffle(x, level, b), q), level, b)
    return x


def permutation(features: int, block: int, level: int) -> torch.Tensor:
    """The index vector p of level `level` (P x = x[p]), as a tensor: for tests and for reading PEFT's boft_P."""
    return _shuffle(torch.arange(features), level, block)
