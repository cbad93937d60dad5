"""The product of an adapter's r Householder reflections, kept factored: H = I - V T V^T.

    plain     H = R_1 R_2 ... R_r,  R_i = I - 2 v_i v_i^T,  v_i = u_i / ||u_i||   (V = [v_1 .. v_r])
              compact WY form: T = S^-1, S = triu(V^T V, 1) + I / 2    (r x r, upper triangular)
    apply_GS  V = Q, the Gram-Schmidt orthonormalisation of u (PEFT's modified Gram-Schmidt, same arithmetic),
              H = I - 2 Q Q^T                                          (T = 2 I)

Applying H to a matrix M (tokens x n, or a weight out x n) costs two thin GEMMs, M - ((M V) T) V^T, instead of
forming the dense n x n H (r products of n x n matrices, as PEFT does) and multiplying by it.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class Reflections(NamedTuple):
    V: torch.Tensor             # (n, r)
    T: Optional[torch.Tensor]   # (r, r); None: 2 I (orthonormal V)


def gram_schmidt(u: torch.Tensor) -> torch.Tensor:
    """The columns of u orthonormalised in order (modified Gram-Schmidt, each projection on the updated vector)."""
    basis = [(u[:, 0] / u[:, 0].norm()).view(-1, 1)]
    for i in range(1, u.shape[1]):
        column = u[:, i].view(-1, 1)
        for q in basis:
            column = column - (q.t() @ column) * q
        basis.append((column / column.norm()).view(-1, 1))
    return torch.cat(basis, dim=1)


def reflections(u: torch.Tensor, apply_GS: bool) -> Reflections:
    """H's factors for hra_u = u (n, r)."""
    if apply_GS:
        return Reflections(gram_schmidt(u), None)
    V = u / u.norm(dim=0)
    r = V.shape[1]
    eye = torch.eye(r, device=V.device, dtype=V.dtype)
    S = torch.triu(V.t() @ V, diagonal=1) + eye * 0.5
    # in float32 at least: torch has no half-precision triangular solve on CPU
    wide = torch.promote_types(V.dtype, torch.float32)
    T = torch.linalg.solve_triangular(S.to(wide), eye.to(wide), upper=True).to(V.dtype)
    return Reflections(V, T)


def times(M: torch.Tensor, refl: Reflections, transposed: bool = False) -> torch.Tensor:
    """M H (or M H^T) for a 2-D M (m, n), as M - (M V) T V^T (T^T for H^T)."""
    projected = M @ refl.V                                   # (m, r)
    if refl.T is None:
        return torch.addmm(M, projected, refl.V.t(), alpha=-2)
    core = refl.T.t() if transposed else refl.T
    return torch.addmm(M, projected @ core, refl.V.t(), alpha=-1)


def dense(refl: Reflections) -> torch.Tensor:
    """H itself (n, n): for inspection and PEFT's get_delta_weight, never on the forward path."""
    n = refl.V.shape[0]
    return times(torch.eye(n, device=refl.V.device, dtype=refl.V.dtype), refl)
