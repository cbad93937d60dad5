"""OFT's math pieces against PEFT's own functions and against finite differences (float64 gradcheck)."""
from __future__ import annotations

import pytest
import torch

from surgery.methods.oft.blockwise import BlockRotate, rotate_features
from surgery.methods.oft.cayley import coft_project_, rotation_blocks, skew

pytest.importorskip("peft")


def _peft_module(n_blocks: int, block_size: int, **kwargs):
    from peft.tuners.oft.layer import OFTRotationModule
    n = block_size * (block_size - 1) // 2
    return OFTRotationModule(n_blocks, n, block_size, n_blocks * block_size, **kwargs)


def _packed(n_blocks: int, block_size: int, seed: int = 0, std: float = 0.2, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_blocks, block_size * (block_size - 1) // 2, generator=g, dtype=dtype) * std


@pytest.mark.parametrize("block_size", [2, 3, 8, 32])
def test_skew_is_peft_packing(block_size):
    module = _peft_module(3, block_size)
    v = _packed(3, block_size)
    assert torch.equal(skew(v, block_size), module._pytorch_skew_symmetric(v, block_size))


@pytest.mark.parametrize("terms", [1, 2, 3, 4, 5, 6, 9])
@pytest.mark.parametrize("block_size", [4, 16])
def test_neumann_series_equals_peft(terms, block_size):
    module = _peft_module(5, block_size)
    v = _packed(5, block_size, std=0.05)
    want = module._cayley_batch(v, block_size, use_cayley_neumann=True, num_neumann_terms=terms)
    assert (rotation_blocks(v, block_size, True, terms) - want).abs().max() <= 1e-6


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_exact_cayley_equals_peft_and_is_orthogonal(dtype, tol):
    module = _peft_module(4, 8)
    v = _packed(4, 8, dtype=dtype)
    got = rotation_blocks(v, 8, False, 5)
    assert got.dtype == dtype
    assert (got - module._cayley_batch(v, 8, use_cayley_neumann=False)).abs().max() <= tol
    eye = torch.eye(8, dtype=dtype)
    assert (got @ got.transpose(1, 2) - eye).abs().max() <= 10 * tol


def test_coft_projection_equals_peft():
    module = _peft_module(6, 8)
    v = _packed(6, 8, std=0.05)
    v[2] *= 1e-4   # one block already inside the radius: untouched
    want = module._project_batch(v.clone(), eps=0.05)
    got = v.clone()
    coft_project_(got, 0.05)
    assert (got - want).abs().max() <= 1e-7
    assert torch.equal(got[2], v[2])


@pytest.mark.parametrize("shared", [False, True])
def test_block_rotate_gradcheck_float64(shared):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    blocks = torch.randn(1 if shared else 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(BlockRotate.apply, (x, blocks))


@pytest.mark.parametrize("neumann", [True, False])
def test_packed_to_rotated_features_gradcheck_float64(neumann):
    """The whole training path: packed parameters -> Cayley(-Neumann) blocks -> rotated features."""
    g = torch.Generator().manual_seed(2)
    v = (torch.randn(3, 6, generator=g, dtype=torch.float64) * 0.1).requires_grad_()
    x = torch.randn(2, 5, 12, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda v, x: rotate_features(x, rotation_blocks(v, 4, neumann, 5), 3)   # noqa: E731
    assert torch.autograd.gradcheck(fn, (v, x))


def test_rotate_features_equals_the_dense_block_diagonal_product():
    g = torch.Generator().manual_seed(3)
    blocks = torch.randn(4, 5, 5, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 20, generator=g, dtype=torch.float64)
    dense = torch.block_diag(*blocks)
    assert (rotate_features(x, blocks, 4) - x @ dense).abs().max() <= 1e-12
    shared = rotate_features(x, blocks[:1], 4)
    assert (shared - x @ torch.block_diag(*[blocks[0]] * 4)).abs().max() <= 1e-12
