"""The factored product of Householder reflections (reflections.py) against the dense product PEFT builds
(its layer's get_delta_weight), for plain and Gram-Schmidt vectors, and the properties the layers rely on.
Tolerances: float64 1e-12 (the same math), Gram-Schmidt vectors bit-identical to PEFT's arithmetic."""
from __future__ import annotations

import pytest
import torch
from peft.tuners.hra.layer import HRALinear as PeftHRALinear
from torch import nn

from surgery.methods.hra.reflections import dense, gram_schmidt, reflections, times

pytestmark = pytest.mark.filterwarnings("ignore:The symmetric initialization")


def _u(n: int, r: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, r, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _peft_dense(u: torch.Tensor, apply_GS: bool, reverse: bool = False) -> torch.Tensor:
    """PEFT's H for hra_u = u, from its own layer."""
    layer = PeftHRALinear(nn.Linear(u.shape[0], 3).to(u.dtype), "default", config=_Config(apply_GS), r=u.shape[1])
    with torch.no_grad():
        layer.hra_u["default"].copy_(u)
    return layer.get_delta_weight("default", reverse=reverse).detach()


class _Config:
    def __init__(self, apply_GS):
        self.apply_GS, self.init_weights, self.inference_mode = apply_GS, True, False


@pytest.mark.parametrize("apply_GS", [False, True])
@pytest.mark.parametrize("n, r", [(7, 1), (16, 4), (12, 6), (5, 5)])
def test_factored_product_equals_peft_dense_product(apply_GS, n, r):
    u = _u(n, r)
    refl = reflections(u, apply_GS)
    H = dense(refl)
    assert (H - _peft_dense(u, apply_GS)).abs().max() <= 1e-12
    assert (H.T - _peft_dense(u, apply_GS, reverse=True)).abs().max() <= 1e-12
    assert (H @ H.T - torch.eye(n, dtype=u.dtype)).abs().max() <= 1e-12          # orthogonal


@pytest.mark.parametrize("apply_GS", [False, True])
def test_times_is_a_right_product_and_transposed_undoes_it(apply_GS):
    u, M = _u(10, 4), _u(3, 10, seed=1)
    refl = reflections(u, apply_GS)
    H = dense(refl)
    assert (times(M, refl) - M @ H).abs().max() <= 1e-12
    assert (times(M, refl, transposed=True) - M @ H.T).abs().max() <= 1e-12
    assert (times(times(M, refl), refl, transposed=True) - M).abs().max() <= 1e-12


def test_paired_vectors_cancel():
    half = _u(9, 3)
    refl = reflections(torch.repeat_interleave(half, 2, dim=1), apply_GS=False)
    assert (dense(refl) - torch.eye(9, dtype=half.dtype)).abs().max() <= 1e-12


def test_gram_schmidt_is_bit_identical_to_peft_even_for_repeated_vectors():
    """Repeated vectors leave only rounding noise after the projection; PEFT normalises that noise, so its H
    depends on the exact arithmetic. Ours follows it: the same Q, bit for bit."""
    u = torch.repeat_interleave(_u(12, 3, dtype=torch.float32), 2, dim=1)
    Q = gram_schmidt(u)
    H_peft = _peft_dense(u, apply_GS=True)
    assert torch.equal(torch.eye(12) - 2 * Q @ Q.t(), H_peft)
