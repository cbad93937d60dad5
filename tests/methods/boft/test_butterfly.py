"""The butterfly math: surgery's index shuffles and block products against peft's dense matrices
(perm2mat(block_butterfly_perm), torch.block_diag), float64 gradcheck, and a layer with several butterfly
factors against peft's own multi-factor path (its CUDA extension's block-diagonal, stood in for by torch)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import surgery
from surgery.methods.boft.butterfly import permutation, rotate_rows, rotations
from surgery.methods.boft.conv import Conv2d
from surgery.methods.boft.linear import Linear

peft_layer = pytest.importorskip("peft.tuners.boft.layer")

# (features F, block size b, factors N): every valid layout PEFT's rules allow for these sizes
LAYOUTS = [(32, 4, 1), (32, 4, 3), (48, 4, 2), (64, 8, 3), (16, 2, 4), (24, 2, 2), (72, 9, 1)]


def _peft_factors(features: int, block: int, factors: int) -> list[torch.Tensor]:
    """PEFT's permutation matrices P_i (P x = x[p]), built by its own functions."""
    helper = peft_layer.BOFTLayer.__new__(peft_layer.BOFTLayer)
    blocks = features // block
    return [helper.perm2mat(helper.block_butterfly_perm(features, blocks // 2 ** i, block // 2, factors - 1))
            .double() for i in range(factors)]


def _dense_rotation(Q: torch.Tensor, Ps: list[torch.Tensor]) -> torch.Tensor:
    """M = M_N-1 ⋯ M_0 with M_i = P_i blockdiag(Q_i) P_i^T, formed densely as PEFT does."""
    M = None
    for i, P in enumerate(Ps):
        factor = P @ torch.block_diag(*Q[i].unbind(0)) @ P.T
        M = factor if M is None else factor @ M
    return M


@pytest.mark.parametrize("features, block, factors", LAYOUTS)
def test_permutations_are_peft_s(features, block, factors):
    for level, P in enumerate(_peft_factors(features, block, factors)):
        assert torch.equal(P[torch.arange(features), permutation(features, block, level)], torch.ones(features))


@pytest.mark.parametrize("features, block, factors", LAYOUTS)
def test_rotate_rows_equals_the_dense_product(features, block, factors):
    g = torch.Generator().manual_seed(features + factors)
    R = torch.randn(factors, features // block, block, block, generator=g, dtype=torch.float64) * 0.3
    Q = rotations(R)
    M = _dense_rotation(Q, _peft_factors(features, block, factors))
    x = torch.randn(2, 3, features, generator=g, dtype=torch.float64)
    assert (rotate_rows(x, Q) - x @ M).abs().max() < 1e-12
    assert (rotate_rows(x, Q, transpose=True) - x @ M.T).abs().max() < 1e-12
    eye = torch.eye(features, dtype=torch.float64)
    assert (M.T @ M - eye).abs().max() < 1e-12            # Cayley blocks: M is orthogonal


def test_cayley_equals_peft_s_and_is_the_identity_at_zero():
    helper = peft_layer.BOFTLayer.__new__(peft_layer.BOFTLayer)
    R = torch.randn(6, 5, 5)
    assert (rotations(R.reshape(2, 3, 5, 5)).reshape(6, 5, 5) - helper.cayley_batch(R)).abs().max() == 0
    assert torch.equal(rotations(torch.zeros(1, 2, 3, 3)), torch.eye(3).expand(1, 2, 3, 3))


@pytest.mark.parametrize("transpose", [False, True])
def test_gradcheck_float64(transpose):
    g = torch.Generator().manual_seed(0)
    R = (torch.randn(3, 4, 4, 4, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    x = torch.randn(3, 16, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, R: rotate_rows(x, rotations(R), transpose), (x, R))


class _TorchBlockDiag:
    """Stands in for peft's fbd_cuda extension (N, D, b, b) -> (N, D*b, D*b), so peft runs N factors on CPU."""

    @staticmethod
    def forward(blocks):
        return [torch.stack([torch.block_diag(*factor.unbind(0)) for factor in blocks])]

    @staticmethod
    def backward(grad, blocks):
        n, d, b, _ = blocks.shape
        return [torch.stack([torch.stack([grad[i, j * b:(j + 1) * b, j * b:(j + 1) * b] for j in range(d)])
                             for i in range(n)])]


@pytest.mark.parametrize("base, block, factors", [
    (nn.Linear(32, 12), 4, 3), (nn.Linear(48, 8, bias=False), 4, 2), (nn.Conv2d(4, 6, 2), 2, 4)])
def test_several_factors_equal_peft_s_extension_path(monkeypatch, base, block, factors):
    """surgery's layers take any number of factors (the spec passes 1, PEFT's CPU path); with the extension's
    block-diagonal available, peft builds N factors, and forward, gradients and merge agree."""
    monkeypatch.setattr(peft_layer, "get_fbd_cuda", lambda: _TorchBlockDiag)
    torch.manual_seed(0)
    base.requires_grad_(False)
    config = dict(boft_block_size=block, boft_n_butterfly_factor=factors, init_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import peft
        cls = peft_layer.Linear if isinstance(base, nn.Linear) else peft_layer.Conv2d
        theirs = cls(base, "default", config=peft.BOFTConfig(target_modules=["x"], **config))
    ours = (Linear if isinstance(base, nn.Linear) else Conv2d)(base)
    features = theirs.boft_R["default"].shape[1] * block
    ours.update_layer("default", surgery.BOFTConfig(**config), boft_block_size=block,
                      boft_block_num=features // block, boft_n_butterfly_factor=factors)
    assert ours.boft_R["default"].shape == theirs.boft_R["default"].shape == (factors, features // block, block, block)
    ours.load_state_dict(theirs.state_dict(), strict=False)
    x = torch.randn(3, base.in_features) if isinstance(base, nn.Linear) else torch.randn(2, 4, 5, 5)
    got, want = ours(x), theirs(x)
    assert (got - want).abs().max() < 1e-5
    got.pow(2).sum().backward()
    want.pow(2).sum().backward()
    for key in ("boft_R", "boft_s"):
        assert (getattr(ours, key)["default"].grad - getattr(theirs, key)["default"].grad).abs().max() < 1e-5
    weight = base.weight.clone()
    ours.merge()
    merged = base.weight.clone()
    base.weight.data.copy_(weight)
    theirs.merge()
    assert (merged - base.weight).abs().max() < 1e-5
