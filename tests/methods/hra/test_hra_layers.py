"""HRA layers against PEFT on the same weights, per base layer type (torch Linear, Conv2d), plain and
Gram-Schmidt: forward, every gradient (hra_u, trained biases, the input), merge / safe merge / unmerge, disable,
several active adapters on one layer, delete. Tolerances (float32, values O(1)): outputs 1e-5, gradients 1e-5,
merged weights 1e-6, outputs after merge 1e-5 of unmerged, unmerge restores W within 1e-6."""
from __future__ import annotations

import copy

import peft
import pytest
import torch

import surgery
from surgery.errors import MergeError
from tests.methods.vera.pairs import base_weights, pair, perturb, set_active, stack, trainable_grads
from tests.support.helpers import max_diff

CASES = [("linear", False), ("linear", True), ("conv2d", False), ("conv2d", True)]
IDS = ["linear", "linear-GS", "conv2d", "conv2d-GS"]


def _pair(kind: str, apply_GS: bool, **extra):
    base, x = stack(kind)
    extra.setdefault("r", 4)
    ours, theirs = pair("HRAConfig", base, std=0.5, target_modules=["a", "b"], apply_GS=apply_GS, **extra)
    return ours, theirs, base, x


@pytest.mark.parametrize("kind, apply_GS", CASES, ids=IDS)
@pytest.mark.parametrize("bias", ["none", "hra_only"])
def test_forward_and_gradients_equal_peft(kind, apply_GS, bias):
    ours, theirs, base, x = _pair(kind, apply_GS, bias=bias)
    out, grads = trainable_grads(ours.train(), x)
    want, peft_grads = trainable_grads(theirs.train(), x)
    assert max_diff(out, want) <= 1e-5
    assert max_diff(out, base(x)) > 1e-2
    assert set(grads) == set(peft_grads)
    assert any("base_layer.bias" in n for n in grads) == (bias == "hra_only")
    for name, grad in grads.items():
        assert max_diff(grad, peft_grads[name]) <= 1e-5, name
        assert grad.abs().max() > 0, name


@pytest.mark.parametrize("kind, apply_GS", CASES, ids=IDS)
@pytest.mark.parametrize("safe", [False, True])
def test_merge_equals_peft_and_unmerge_restores(kind, apply_GS, safe):
    ours, theirs, _, x = _pair(kind, apply_GS)
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


@pytest.mark.parametrize("kind, apply_GS", CASES[::2], ids=IDS[::2])
def test_merge_and_unload_gives_peft_weights(kind, apply_GS):
    ours, theirs, _, x = _pair(kind, apply_GS)
    with torch.no_grad():
        adapted = ours(x)
        mine = copy.deepcopy(ours).merge_and_unload()
        assert max_diff(mine(x), adapted) <= 1e-5
    a, b = mine.state_dict(), copy.deepcopy(theirs).merge_and_unload().state_dict()
    assert set(a) == set(b)
    assert max(max_diff(a[k], b[k]) for k in a) <= 1e-6


def test_safe_merge_refuses_non_finite_and_leaves_the_layer_untouched():
    ours, _, _, _ = _pair("linear", False)
    with torch.no_grad():
        ours.base_model.model.b.hra_u["default"][0, 0] = float("nan")
    before = base_weights(ours)
    with pytest.raises(MergeError, match="adapter default seems to be broken.*NaN/inf"):
        ours.merge_adapter(safe_merge=True)
    for path, weight in base_weights(ours).items():
        assert torch.equal(weight, before[path])
    assert not ours.base_model.model.b.merged


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_disable_is_the_base_bit_for_bit(kind):
    ours, _, base, x = _pair(kind, False)
    with torch.no_grad(), ours.disable_adapter():
        assert torch.equal(ours(x), base(x))


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_two_active_adapters_on_one_layer_equal_peft_then_delete(kind):
    ours, theirs, _, x = _pair(kind, False)
    second = dict(target_modules=["a", "b"], r=2, apply_GS=True)
    ours.add_adapter("other", surgery.HRAConfig(**second))
    theirs.add_adapter("other", peft.HRAConfig(**second))
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
        assert max_diff(both, theirs(x)) <= 1e-5
        assert max_diff(both, only_default) > 1e-3
        ours.merge_adapter()                       # both merged in order (W H_default H_other), as PEFT
        theirs.merge_adapter()
        for path, weight in base_weights(ours).items():
            assert max_diff(weight, base_weights(theirs)[path]) <= 1e-6
        ours.unmerge_adapter()
        ours.delete_adapter("other")
        assert ours.base_model.model.a.adapter_names() == ["default"]
        assert list(ours.base_model.model.a.hra_r) == ["default"]
        assert max_diff(ours(x), only_default) <= 1e-6
