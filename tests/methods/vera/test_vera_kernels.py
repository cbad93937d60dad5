"""VeRA's hand-written backward passes (delta.py: the adapter alone; fused.py: base matmul included) against
calculus (float64 gradcheck, torch's default tolerances) and the fused path against the generic one on the same
model (float32: outputs and every gradient within 1e-6; with dropout, the same mask from the same seed)."""
from __future__ import annotations

import contextlib

import pytest
import torch

import surgery.methods.vera.layer as layer_module
from surgery.methods.vera.delta import VeraDelta
from surgery.methods.vera.fused import _VeraLinear
from tests.support.helpers import max_diff

from .pairs import pair, stack, trainable_grads


def _double(*shape, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)


def test_adapter_node_gradcheck():
    args = (_double(5, 4), _double(5, 3), _double(2, 3, grad=False), _double(4, 2, grad=False), _double(2),
            _double(4))
    assert torch.autograd.gradcheck(VeraDelta.apply, args)


@pytest.mark.parametrize("dropped", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_node_gradcheck(dropped, bias):
    x = _double(5, 3)
    x_d = _double(5, 3, seed=1) if dropped else x
    args = (x, x_d, _double(3, 4, seed=2), _double(4, seed=3) if bias else None, _double(2, 3, grad=False),
            _double(4, 2, grad=False), _double(2, seed=4), _double(4, seed=5))
    assert torch.autograd.gradcheck(_VeraLinear.apply, args)


@contextlib.contextmanager
def generic_path_only():
    original = layer_module.fused_forward
    layer_module.fused_forward = lambda layer, x: None
    try:
        yield
    finally:
        layer_module.fused_forward = original


@contextlib.contextmanager
def count_fused():
    calls = []
    original = _VeraLinear.apply

    def counted(*args):
        calls.append(1)
        return original(*args)
    _VeraLinear.apply = counted
    try:
        yield calls
    finally:
        _VeraLinear.apply = original


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_path_equals_the_generic_path(kind, dropout):
    base, x = stack(kind)
    ours, _ = pair("VeraConfig", base, std=0.5, target_modules=["a", "b"], r=3, fan_in_fan_out=kind == "conv1d",
                   vera_dropout=dropout, bias="vera_only")
    ours.train()
    torch.manual_seed(0)
    with count_fused() as calls:
        out, grads = trainable_grads(ours, x)
    assert len(calls) == 2                          # both layers ran fused
    torch.manual_seed(0)
    with generic_path_only():
        want, generic = trainable_grads(ours, x)
    assert max_diff(out, want) <= 1e-6
    for name, grad in grads.items():
        assert max_diff(grad, generic[name]) <= 1e-6, name
