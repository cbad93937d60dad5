"""LoHa-specific: the Khatri-Rao form the training path multiplies by, when that path runs, the CP
gradients (where PEFT's hand-written backward is wrong), and the rank read back from a checkpoint.

Tolerances: float64 identities within 1e-12; float32 gradients within 1e-5 relative to the largest entry.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import surgery
import surgery.methods.loha.linear as loha_linear
from surgery.methods.loha.hadamard import factored_is_cheaper, hadamard_delta, khatri_rao
from surgery.methods.loha.spec import SPEC
from tests.methods.lycoris.pairs import adapter_grads, adapter_layer, inputs, pair
from tests.support.helpers import max_diff


def _double(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("out_f, in_f, r", [(7, 5, 1), (12, 9, 3), (4, 30, 5)])
def test_khatri_rao_factors_multiply_to_the_hadamard_delta(out_f, in_f, r):
    w1a, w1b, w2a, w2b = _double(out_f, r), _double(r, in_f, seed=1), _double(out_f, r, seed=2), _double(r, in_f, seed=3)
    mask = (_double(out_f, seed=4) > 0).double() * 0.7
    k_a, k_b = khatri_rao(w1a, w1b, w2a, w2b, mask)
    assert k_a.shape == (out_f, r * r) and k_b.shape == (r * r, in_f)
    want = hadamard_delta(w1a, w1b, w2a, w2b, 1.0) * mask[:, None]
    assert max_diff(k_a @ k_b, want) <= 1e-12


@contextlib.contextmanager
def counting_khatri_rao():
    calls = []
    original = loha_linear.khatri_rao
    loha_linear.khatri_rao = lambda *a: calls.append(1) or original(*a)
    try:
        yield calls
    finally:
        loha_linear.khatri_rao = original


@pytest.mark.parametrize("r, factored", [(2, True), (8, False)])
def test_the_factored_path_runs_in_training_only_where_cheaper(r, factored):
    ours, theirs, _ = pair("linear", "LoHaConfig", r=r)    # Linear(64, 48): r² (64 + 48) < 64 * 48 for r=2 only
    assert factored_is_cheaper(r, 64, 48) == factored
    x = inputs("linear")
    with counting_khatri_rao() as calls:
        out, grads = adapter_grads(ours, x)
        assert len(calls) == int(factored)
        with torch.no_grad():
            ours(x)                                          # eval: PEFT's dense ΔW, bit-identical
        assert len(calls) == int(factored)
    want, peft_grads = adapter_grads(theirs, x)
    assert max_diff(out, want) <= 1e-5
    for name, grad in grads.items():
        assert max_diff(grad, peft_grads[name]) <= 1e-5 * max(1.0, peft_grads[name].abs().max().item()), name


def _reference_cp_grads(layer, x, weights):
    """Float64 autograd through PEFT's CP forward expression (rebuild with einsum, conv with ΔW)."""
    params = {n: getattr(layer, n)["default"].detach().double().requires_grad_(True)
              for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")}
    p = params
    rebuild = lambda t, wa, wb: torch.einsum("i j k l, j r, i p -> p r k l", t, wb, wa)  # noqa: E731
    delta = rebuild(p["hada_t1"], p["hada_w1_a"], p["hada_w1_b"]) * rebuild(p["hada_t2"], p["hada_w2_a"],
                                                                            p["hada_w2_b"]) * layer.scaling["default"]
    base = layer.get_base_layer()
    out = F.conv2d(x.double(), delta.reshape(base.weight.shape), stride=base.stride, padding=base.padding,
                   dilation=base.dilation, groups=base.groups)
    (out * weights.double()).sum().backward()
    return {n: t.grad for n, t in params.items()}


@pytest.mark.parametrize("kind", ["conv2d", "conv2d_grouped_strided"])
def test_cp_gradients_are_autograds_where_peft_is_wrong(kind):
    ours, theirs, _ = pair(kind, "LoHaConfig", r=3, use_effective_conv2d=True)
    x = inputs(kind)
    out, grads = adapter_grads(ours, x, seed=11)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(11))
    reference = _reference_cp_grads(adapter_layer(ours), x, weights)
    _, peft_grads = adapter_grads(theirs, x, seed=11)
    for name, want in reference.items():
        got = grads[f"base_model.model.layer.{name}.default"]
        assert max_diff(got, want) <= 1e-5 * max(1.0, want.abs().max().item()), name
        peft_error = max_diff(peft_grads[f"base_model.model.layer.{name}.default"], want)
        if name in ("hada_w1_a", "hada_w2_a"):
            assert peft_error > 1e-2, name        # PEFT 0.21.2's HadaWeightCP.backward: wrong factors
        else:
            assert peft_error <= 1e-5 * max(1.0, want.abs().max().item()), name


def test_peft_hand_written_cp_backward_fails_gradcheck():
    """Documents the PEFT bug the previous test works around (peft 0.21.2): not a surgery behaviour."""
    from peft.tuners.loha.layer import HadaWeightCP
    r, o, i, k = 2, 3, 2, 2
    tensors = [_double(*s, seed=n).requires_grad_(True)
               for n, s in enumerate([(r, r, k, k), (r, o), (r, i), (r, r, k, k), (r, o), (r, i)])]
    scale = torch.tensor(1.0, dtype=torch.float64)
    assert not torch.autograd.gradcheck(lambda *t: HadaWeightCP.apply(*t, scale), tensors, raise_exception=False)


def test_checkpoint_rank_reads_r_from_the_factors(tmp_path):
    ours, _, _ = pair("conv2d", "LoHaConfig", r=3, use_effective_conv2d=True)
    state = surgery.get_peft_model_state_dict(ours)
    tensors = {k.split(".")[-1]: v for k, v in state.items()}
    assert SPEC.checkpoint_rank(tensors) == 3
    assert tensors["hada_t1"].shape == (3, 3, 3, 3) and tensors["hada_w1_a"].shape == (3, 6)
