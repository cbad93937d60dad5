"""From OFT's packed parameters to its rotation blocks (no dense in x in matrix anywhere).

    packed v: (n_blocks, b(b-1)/2), the strict upper triangle of each block, row-major (torch.triu_indices)
    Q = U(v) - U(v)^T                                    skew-symmetric, (n_blocks, b, b)
    exact Cayley:      R = (I - Q)(I + Q)^-1
    Cayley-Neumann:    R = I + 2Q + 2Q^2 + ... + 2Q^(m-1) + Q^m  (PEFT's series with T terms: m = max(3, T-1);
                       T = 2: I + 2Q; T <= 1: I), evaluated by Horner's rule with baddbmm
    COFT projection:   v <- v * min(1, eps' / ||Q||_F) per block, eps' = eps / sqrt(n_blocks)

Note the two forms are not the same rotation: the series expands (I + Q)(I - Q)^-1, the transpose (inverse)
of the exact form. That is PEFT 0.21.2's arithmetic, kept as is.
"""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def _upper_positions(block_size: int, device: torch.device) -> torch.Tensor:
    """Flat positions i * b + j of the strict upper triangle, in torch.triu_indices order (PEFT's packing).
    Made outside inference mode: a cached inference tensor could not be saved for a later backward."""
    with torch.inference_mode(False):
        rows, cols = torch.triu_indices(block_size, block_size, 1)
        return (rows * block_size + cols).to(device)


def skew(packed: torch.Tensor, block_size: int) -> torch.Tensor:
    """The skew-symmetric blocks Q (n, b, b) of packed upper triangles (n, b(b-1)/2). index_copy's backward
    is a gather (cheap), where advanced indexing's would be an accumulating scatter."""
    upper = packed.new_zeros(packed.shape[0], block_size * block_size).index_copy(
        1, _upper_positions(block_size, packed.device), packed).view(-1, block_size, block_size)
    return upper - upper.transpose(1, 2)


def neumann_coefficients(terms: int) -> list[float]:
    """c_0..c_m of PEFT's truncated series R = sum c_k Q^k."""
    if terms <= 1:
        return [1.0]
    if terms == 2:
        return [1.0, 2.0]
    degree = max(3, terms - 1)
    return [1.0] + [2.0] * (degree - 1) + [1.0]


def rotation_blocks(packed: torch.Tensor, block_size: int, use_neumann: bool, terms: int) -> torch.Tensor:
    """The rotation blocks R (n, b, b) in packed's dtype."""
    n = packed.shape[0]
    coefficients = neumann_coefficients(terms) if use_neumann else []
    if block_size == 1 or len(coefficients) == 1:   # no free parameter, or a series cut to its first term
        return torch.eye(block_size, device=packed.device, dtype=packed.dtype).expand(n, block_size, block_size).clone()
    q = skew(packed, block_size)
    if not use_neumann:   # a float32 identity, as PEFT's: half-precision blocks are solved in float32
        eye32 = torch.eye(block_size, device=packed.device)
        return torch.linalg.solve(eye32 + q, eye32 - q, left=False).to(packed.dtype)
    eye = torch.eye(block_size, device=packed.device, dtype=packed.dtype)
    # Horner: P = c_m Q + c_(m-1) I, then P <- c_k I + Q P down to k = 0
    acc = (q * coefficients[-1]).add_(eye, alpha=coefficients[-2])
    for c in reversed(coefficients[:-2]):
        acc = torch.baddbmm(eye, q, acc, beta=c)
    return acc


@torch.no_grad()
def coft_project_(packed: torch.Tensor, eps: float) -> None:
    """COFT: scale each block's packed vector in place so that ||Q||_F <= eps / sqrt(n_blocks).

    A block already on the sphere up to rounding (a few ulps out) is left alone: projecting it again would
    move it by an ulp on every forward (PEFT's outputs drift by ~1e-6 between identical calls); this keeps
    repeated forwards bit-identical and differs from PEFT's values by < 1e-6 relative."""
    radius = eps * (1 / torch.sqrt(torch.tensor(float(packed.shape[0]))))   # float32 arithmetic, as PEFT
    radius = radius.to(packed.dtype)
    norm = packed.norm(dim=1, keepdim=True) * (2 ** 0.5)   # ||Q||_F: each entry appears twice (+v, -v)
    inside = norm <= radius * (1 + 8 * torch.finfo(packed.dtype).eps)
    if not inside.all():
        packed.mul_(torch.where(inside, torch.ones_like(norm), radius / norm))
