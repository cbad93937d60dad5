"""VeRA layers against PEFT on the same weights, per base layer type (torch Linear, transformers' Conv1D):
forward, every gradient (lambdas, trained biases, the input), merge / safe merge / unmerge, disable, several
adapters on one layer, delete. Tolerances (float32): outputs 1e-6, gradients 1e-5 (values O(1)), merged weights 1e-6,
outputs after merge 1e-5 of unmerged, unmerge restores W within 1e-6."""
from __future__ import annotations

import copy

import peft
import pytest
import torch

import surgery
from surgery.errors import MergeError
from tests.support.helpers import max_diff

from .pairs import base_weights, pair, perturb, set_active, stack, trainable_grads

KINDS = ["linear", "conv1d"]
TARGETS = dict(target_modules=["a", "b"], r=3)


def _pair(kind: str, **extra):
    base, x = stack(kind)
    extra.setdefault("fan_in_fan_out", kind == "conv1d")
    ours, theirs = pair("VeraConfig", base, std=0.5, **TARGETS, **extra)
    return ours, theirs, base, x


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", ["none", "vera_only"])
def test_forward_and_gradients_equal_peft(kind, bias):
    ours, theirs, base, x = _pair(kind, bias=bias)
    out, grads = trainable_grads(ours.train(), x)
    want, peft_grads = trainable_grads(theirs.train(), x)
    assert max_diff(out, want) <= 1e-6
    assert max_diff(out, base(x)) > 1e-2                      # the adapter does something
    assert set(grads) == set(peft_grads)
    assert any("base_layer.bias" in n for n in grads) == (bias == "vera_only")
    for name, grad in grads.items():
        assert max_diff(grad, peft_grads[name]) <= 1e-5, name
        assert grad.abs().max() > 0, name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("safe", [False, True])
def test_merge_equals_peft_and_unmerge_restores(kind, safe):
    ours, theirs, _, x = _pair(kind)
    before = base_weights(ours)
    with torch.no_grad():
        adapted = ours(x)
        ours.merge_adapter(safe_merge=safe)
        theirs.merge_adapter(safe_merge=safe)
        merged_ours, merged_theirs = base_weights(ours), base_weights(theirs)
        assert set(merged_ours) == set(merged_theirs) == {"a", "b"}
        for path in merged_ours:
            assert max_diff(merged_ours[path], merged_theirs[path]) <= 1e-6
            assert max_diff(merged_ours[path], before[path]) > 1e-3
        assert max_diff(ours(x), adapted) <= 1e-5
        ours.unmerge_adapter()
        for path, weight in base_weights(ours).items():
            assert max_diff(weight, before[path]) <= 1e-6
        assert max_diff(ours(x), adapted) <= 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_merge_and_unload_gives_peft_weights(kind):
    ours, theirs, _, x = _pair(kind)
    with torch.no_grad():
        adapted = ours(x)
        mine = copy.deepcopy(ours).merge_and_unload()
        peft_merged = copy.deepcopy(theirs).merge_and_unload()
        assert max_diff(mine(x), adapted) <= 1e-5
    a, b = mine.state_dict(), peft_merged.state_dict()
    assert set(a) == set(b)
    assert max(max_diff(a[k], b[k]) for k in a) <= 1e-6


def test_safe_merge_refuses_non_finite_and_leaves_the_layer_untouched():
    ours, _, _, x = _pair("linear")
    with torch.no_grad():
        ours.base_model.model.b.vera_lambda_b["default"][1] = float("inf")
    before = base_weights(ours)
    with pytest.raises(MergeError, match="adapter default seems to be broken.*NaN/inf"):
        ours.merge_adapter(safe_merge=True)
    for path, weight in base_weights(ours).items():
        assert torch.equal(weight, before[path])
    assert all(not m.merged for m in (ours.base_model.model.a, ours.base_model.model.b))


@pytest.mark.parametrize("kind", KINDS)
def test_disable_is_the_base_bit_for_bit(kind):
    ours, _, base, x = _pair(kind)
    with torch.no_grad(), ours.disable_adapter():
        assert torch.equal(ours(x), base(x))


@pytest.mark.parametrize("kind", KINDS)
def test_two_active_adapters_on_one_layer_equal_peft_then_delete(kind):
    ours, theirs, _, x = _pair(kind)
    second = dict(TARGETS, fan_in_fan_out=kind == "conv1d", init_weights=False)
    ours.add_adapter("other", surgery.VeraConfig(**second))
    theirs.add_adapter("other", peft.VeraConfig(**second))
    set_active(ours, ["default", "other"])
    set_active(theirs, ["default", "other"])
    perturb(ours, seed=5, std=0.5)                     # both adapters (both trainable now), copied to peft
    for name in ("default", "other"):
        peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours, adapter_name=name),
                                       adapter_name=name)
    with torch.no_grad():
        both = ours(x)
        set_active(ours, ["default"])
        only_default = ours(x)
        set_active(ours, ["default", "other"])
        assert max_diff(both, theirs(x)) <= 1e-6
        assert max_diff(both, only_default) > 1e-3
        ours.delete_adapter("other")
        layer = ours.base_model.model.a
        assert layer.adapter_names() == ["default"] and list(layer.r) == ["default"]
        assert "other" not in ours.base_model.vera_A and "default" in ours.base_model.vera_A
        assert torch.equal(ours(x), only_default)
