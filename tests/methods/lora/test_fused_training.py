"""The fused training path (methods/lora/fused.py) against calculus and against the generic path and PEFT.

gradcheck: float64 finite differences vs the hand-written backward (torch's default tolerances, atol 1e-5,
rtol 1e-3). Fused vs generic: same model, same seeds; float32, outputs and every gradient within 1e-5.
"""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

import surgery
import surgery.methods.lora.fused as fused
import surgery.methods.lora.linear as linear_module
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff, peft_model, perturb_adapters, with_float64_twin


@contextlib.contextmanager
def generic_path_only():
    """Route every LoRA Linear through the generic (unfused) path."""
    original = linear_module.fused_forward
    linear_module.fused_forward = lambda layer, x: None
    try:
        yield
    finally:
        linear_module.fused_forward = original


@contextlib.contextmanager
def count_fused_calls():
    calls = {"lora": 0, "dora": 0, "mixed": 0, "dora_mixed": 0}
    originals = (fused._LoraLinear.apply, fused._DoraLinear.apply, fused._LoraLinearMixed.apply,
                 fused._DoraLinearMixed.apply)

    def counted(kind, apply):
        def wrapper(*args):
            calls[kind] += 1
            return apply(*args)
        return wrapper
    fused._LoraLinear.apply = counted("lora", originals[0])
    fused._DoraLinear.apply = counted("dora", originals[1])
    fused._LoraLinearMixed.apply = counted("mixed", originals[2])
    fused._DoraLinearMixed.apply = counted("dora_mixed", originals[3])
    try:
        yield calls
    finally:
        (fused._LoraLinear.apply, fused._DoraLinear.apply, fused._LoraLinearMixed.apply,
         fused._DoraLinearMixed.apply) = originals


def _double(*shape, grad=True, seed=0):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_dropout_input", [False, True])
def test_lora_backward_matches_finite_differences(with_bias, with_dropout_input):
    x, weight, A, B = _double(5, 4), _double(3, 4, seed=1), _double(2, 4, seed=2), _double(3, 2, seed=3)
    bias = _double(3, seed=4) if with_bias else None
    x_d = _double(5, 4, seed=5) if with_dropout_input else None
    assert torch.autograd.gradcheck(lambda *t: fused._LoraLinear.apply(*t), (x, weight, bias, A, B, 0.7, x_d))


@pytest.mark.parametrize("with_bias", [False, True])
def test_dora_backward_matches_finite_differences(with_bias):
    x, weight, A, B = _double(5, 4), _double(3, 4, seed=1), _double(2, 4, seed=2), _double(3, 2, seed=3)
    magnitude = _double(3, seed=6)
    norm = _double(3, grad=False, seed=7).abs() + 0.5   # detached, as in DoRA
    bias = _double(3, seed=4) if with_bias else None
    assert torch.autograd.gradcheck(lambda *t: fused._DoraLinear.apply(*t),
                                    (x, weight, bias, A, B, magnitude, norm, 1.3))


def _train_step_grads(model, inputs, seed=0):
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)   # same dropout masks on both paths
    out = model(input_ids=inputs).logits
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


CASES = {
    "lora": dict(r=4, lora_alpha=8),
    "lora_dropout": dict(r=4, lora_alpha=8, lora_dropout=0.3),
    "lora_bias_all": dict(r=4, lora_alpha=8, bias="all"),
    "rslora": dict(r=4, lora_alpha=8, use_rslora=True),
    "dora": dict(r=4, lora_alpha=8, use_dora=True),
    "dora_bias_all": dict(r=4, lora_alpha=8, use_dora=True, bias="all"),
}


@pytest.mark.parametrize("builder", [tm.tiny_llama, tm.tiny_gpt2], ids=["llama", "gpt2_conv1d"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_path_equals_generic_path(builder, case):
    model = surgery.get_peft_model(builder(), surgery.LoraConfig(target_modules="all-linear", **CASES[case]))
    perturb_adapters(model, biases=False)
    inputs = tm.token_batch()
    with count_fused_calls() as calls:
        out_fused, g_fused = _train_step_grads(model, inputs)
    assert calls["dora" if "dora" in case else "lora"] > 0, "the fused path did not run"
    with generic_path_only(), count_fused_calls() as calls:
        out_generic, g_generic = _train_step_grads(model, inputs)
    assert calls == {"lora": 0, "dora": 0, "mixed": 0, "dora_mixed": 0}
    assert max_diff(out_fused, out_generic) < 1e-5
    assert g_fused.keys() == g_generic.keys() and len(g_fused) > 0
    for name in g_fused:
        assert max_diff(g_fused[name], g_generic[name]) < 1e-5, name


@pytest.mark.parametrize("use_dora", [False, True])
def test_fused_training_gradients_equal_peft(use_dora):
    base = tm.tiny_llama()
    kwargs = dict(target_modules="all-linear", r=4, lora_alpha=8, use_dora=use_dora)
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**kwargs))
    theirs = peft_model(base, **kwargs)
    perturb_adapters(theirs, biases=False)
    ours.load_state_dict(theirs.state_dict())
    out_ours, g_ours = _train_step_grads(ours, tm.token_batch())
    out_theirs, g_theirs = _train_step_grads(theirs, tm.token_batch())
    assert max_diff(out_ours, out_theirs) < 1e-5
    assert g_ours.keys() == g_theirs.keys()
    for name in g_ours:
        assert max_diff(g_ours[name], g_theirs[name]) < 1e-5, name


def _one_layer(**kwargs):
    model = surgery.get_peft_model(nn.Sequential(nn.Linear(6, 5)), surgery.LoraConfig(target_modules=["0"], r=2,
                                                                                         **kwargs))
    model.train()
    return model, model.base_model.model[0]


def test_hooks_on_the_base_layer_still_fire():
    model, layer = _one_layer()
    seen = []
    layer.base_layer.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    with count_fused_calls() as calls:
        model(torch.randn(3, 6)).sum().backward()
    assert seen == [torch.Size([3, 5])] and calls["lora"] == 0


def test_generic_path_for_several_adapters_eval_and_autocast():
    model, layer = _one_layer()
    model.add_adapter("other", surgery.LoraConfig(target_modules=["0"], r=2))
    x = torch.randn(3, 6)
    with count_fused_calls() as calls:
        layer.set_adapter(["default", "other"])
        model(x).sum().backward()                         # two active adapters
        layer.set_adapter("default")
        model.eval()
        model(x)                                          # inference keeps PEFT's op order
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
        assert calls["lora"] == 0
        model(x).sum().backward()
        assert calls["lora"] == 1


def test_fused_path_refuses_in_place_change_of_a_saved_weight():
    """Autograd's version check still guards the saved weight: merging between forward and backward fails."""
    model, layer = _one_layer()
    out = model(torch.randn(3, 6, requires_grad=True)).sum()
    with torch.no_grad():
        layer.base_layer.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


@pytest.mark.parametrize("dropout, dora", [(0.0, False), (0.2, False), (0.0, True)],
                         ids=["lora", "lora_dropout", "dora"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_mixed_dtype_fused_path_matches_peft_outputs_and_is_as_accurate(dtype, dropout, dora):
    """float32 adapters on a half base (autocast_adapter_dtype): the forward is bit-identical to PEFT's; the
    gradients differ from PEFT's by half-precision rounding of dx (the scale is applied at another point of the
    float32 math), so both are compared with a float64 run of the same weights: ours must be no further from
    it than PEFT's (x1.25)."""
    base = tm.tiny_llama().to(dtype)
    kwargs = dict(target_modules="all-linear", r=4, lora_alpha=8, lora_dropout=dropout, use_dora=dora)
    ours, theirs, exact = with_float64_twin(base, **kwargs)
    with count_fused_calls() as calls:
        out_ours, g_ours = _train_step_grads(ours, tm.token_batch())
    assert calls["mixed" if not dora else "dora_mixed"] > 0
    out_theirs, g_theirs = _train_step_grads(theirs, tm.token_batch())
    _, g_exact = _train_step_grads(exact, tm.token_batch())
    if dora:   # the row norm by decomposition: one unit in the last place of the half dtype at most
        ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
        assert max_diff(out_ours, out_theirs) <= ulp * out_theirs.float().abs().max().item()
    else:
        assert torch.equal(out_ours, out_theirs)

    def error(grads):
        return max(((grads[k].double() - g_exact[k]).abs().max() / g_exact[k].abs().max()).item() for k in g_exact)
    assert g_ours.keys() == g_theirs.keys() == g_exact.keys()
    assert error(g_ours) <= 1.25 * error(g_theirs) + 1e-6
