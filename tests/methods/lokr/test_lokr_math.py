"""LoKr-specific: PEFT's factorization and factor shapes exactly, the factored Kronecker product of the
training path (both contraction orders, and when it runs), the Conv1d CP core PEFT itself cannot run, and the
rank read back from a checkpoint.

Tolerances: float64 identities within 1e-12; float32 outputs within 1e-5; shapes and splits exact.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import warnings

import peft
import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lokr.layer import factorization as peft_factorization
from torch import nn

import surgery
import surgery.methods.lokr.linear as lokr_linear
from surgery.methods.lokr.factorization import factorization
from surgery.methods.lokr.kron import kron_apply
from surgery.methods.lokr.spec import SPEC
from tests.methods.lycoris.pairs import Holder, adapter_grads, adapter_layer, inputs, pair, perturb
from tests.support.helpers import max_diff


def test_factorization_equals_peft_for_every_small_dimension_and_factor():
    for dimension, factor in itertools.product(range(1, 400), [-1, 1, 2, 3, 4, 5, 8, 16, 64, 1000]):
        assert factorization(dimension, factor) == peft_factorization(dimension, factor), (dimension, factor)
    for dimension in (1376, 4096, 11008, 14336, 3072, 50257):
        assert factorization(dimension) == peft_factorization(dimension)


LAYERS = [nn.Linear(32, 48), nn.Linear(127, 20), nn.Linear(96, 7), nn.Conv2d(6, 12, 3, groups=3),
          nn.Conv2d(5, 9, (1, 3)), nn.Conv1d(8, 10, 5), nn.Conv1d(4, 6, 1)]
OPTIONS = [dict(r=1), dict(r=3, decompose_both=True), dict(r=12), dict(r=2, decompose_factor=4),
           dict(r=1, use_effective_conv2d=True, decompose_both=True), dict(r=4, use_effective_conv2d=True)]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda m: repr(m))
def test_factor_shapes_and_counts_equal_peft(layer):
    for options in OPTIONS:
        kwargs = dict(target_modules=["layer"], **options)
        base = Holder(copy.deepcopy(layer))
        ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoKrConfig(**kwargs))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoKrConfig(**kwargs))
        mine = {n: tuple(p.shape) for n, p in ours.named_parameters() if p.requires_grad}
        assert mine == {n: tuple(p.shape) for n, p in theirs.named_parameters() if p.requires_grad}, options
        plan = surgery.plan(copy.deepcopy(base), surgery.LoKrConfig(**kwargs))
        assert plan.added_params == sum(p.numel() for p in theirs.parameters() if p.requires_grad)


@pytest.mark.parametrize("a, b, c, d", [(3, 5, 2, 7), (6, 2, 9, 4), (1, 8, 8, 1)])
def test_factored_kronecker_product_equals_torch_kron_in_both_orders(a, b, c, d):
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(a, c, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, c * d, generator=g, dtype=torch.float64)
    want = x @ torch.kron(w1, w2).T
    assert max_diff(kron_apply(x, w1, w2), want) <= 1e-12
    assert max_diff(kron_apply(x, w1.T.contiguous().T, w2), want) <= 1e-12   # non-contiguous factor
    # the roles of (a, c) and (b, d) swapped: each shape takes the other contraction order here
    xt = x.reshape(2, 3, c, d).transpose(-1, -2).reshape(2, 3, d * c)
    assert max_diff(kron_apply(xt, w2, w1), xt @ torch.kron(w2, w1).T) <= 1e-12


@contextlib.contextmanager
def counting_kron_apply():
    calls = []
    original = lokr_linear.kron_apply
    lokr_linear.kron_apply = lambda *a: calls.append(1) or original(*a)
    try:
        yield calls
    finally:
        lokr_linear.kron_apply = original


def test_the_factored_path_runs_in_training_with_grad_only():
    ours, theirs, _ = pair("linear", "LoKrConfig", r=2, rank_dropout=0.3)
    x = inputs("linear")
    with counting_kron_apply() as calls:
        out, grads = adapter_grads(ours, x)
        assert len(calls) == 1
        with torch.no_grad():
            ours(x)
        assert len(calls) == 1
    want, peft_grads = adapter_grads(theirs, x)
    assert max_diff(out, want) <= 1e-5
    for name, grad in grads.items():
        assert max_diff(grad, peft_grads[name]) <= 1e-5 * max(1.0, peft_grads[name].abs().max().item()), name


def test_conv1d_cp_core_runs_where_peft_fails():
    kwargs = dict(target_modules=["layer"], r=1, use_effective_conv2d=True)
    ours, _, base = pair("conv1d", "LoKrConfig", **kwargs)
    x = inputs("conv1d")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoKrConfig(**kwargs))
    with pytest.raises(RuntimeError, match="view size"):   # peft 0.21.2 + torch 2.13: torch.kron rejects strides
        theirs(x)
    layer = adapter_layer(ours)
    assert layer.lokr_t2["default"].shape == (1, 1, 3, 1)
    # PEFT's formula in float64 with canonical strides
    w1 = layer.lokr_w1["default"].double()
    t, wa, wb = (getattr(layer, n)["default"].double() for n in ("lokr_t2", "lokr_w2_a", "lokr_w2_b"))
    w2 = torch.einsum("i j k l, i p, j r -> p r k l", t, wa, wb).clone(memory_format=torch.contiguous_format)
    delta = (torch.kron(w1[:, :, None, None], w2) * layer.scaling["default"]).reshape(8, 6, 3)
    base_layer = layer.get_base_layer()
    want = base(x).double() + F.conv1d(x.double(), delta, padding=base_layer.padding)
    with torch.no_grad():
        got = ours(x)
    assert max_diff(got, want) <= 1e-5 and max_diff(got, base(x)) > 1e-3
    merged = copy.deepcopy(ours).merge_and_unload()
    with torch.no_grad():
        assert max_diff(merged(x), got) <= 1e-5


def test_checkpoint_rank_reads_r_from_a_low_rank_factor():
    low, _, _ = pair("linear", "LoKrConfig", r=2)
    full, _, _ = pair("linear", "LoKrConfig", r=16)
    for model, want in ((low, 2), (full, "")):
        tensors = {k.split(".")[-1]: v for k, v in surgery.get_peft_model_state_dict(model).items()}
        assert SPEC.checkpoint_rank(tensors) == want


def test_a_second_adapter_with_other_shapes_and_deletion():
    ours, _, _ = pair("linear", "LoKrConfig", r=2)
    ours.add_adapter("full", surgery.LoKrConfig(target_modules=["layer"], r=16, decompose_both=True))
    perturb(ours, "full", seed=4)
    layer = adapter_layer(ours)
    assert layer.layouts["full"].full_w2 and not layer.layouts["default"].full_w2
    x = inputs("linear")
    with torch.no_grad():
        first = ours(x)
        ours.set_adapter("full")
        assert max_diff(ours(x), first) > 1e-3
    ours.delete_adapter("full")
    assert "full" not in layer.layouts and "full" not in layer.r
    assert not any(".full" in n for n, _ in ours.named_parameters())
