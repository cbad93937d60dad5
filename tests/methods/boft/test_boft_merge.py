"""BOFT merge, safe merge and unmerge against peft's merged weights, per base layer type and for two adapters."""
from __future__ import annotations

import copy

import pytest
import torch

import surgery
from surgery.errors import MergeError
from tests.support.helpers import MODELS, max_diff, run

from .pairs import boft_layers, pair, perturb_boft

pytest.importorskip("peft")

CASES = [
    ("llama", dict(target_modules=["q_proj", "v_proj", "down_proj"], boft_block_size=4)),
    ("llama_bias", dict(target_modules=["q_proj", "up_proj"], boft_block_size=0, boft_block_num=4)),
    ("conv", dict(target_modules=["conv2d", "conv2d_strided"], boft_block_size=9)),
    ("conv", dict(target_modules=["conv2d_strided", "head"], boft_block_size=0, boft_block_num=1)),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_merged_weights_equal_peft_and_keep_the_outputs(name, kwargs):
    ours, theirs = pair(name, **kwargs)
    ours.eval(), theirs.eval()
    adapted = run(ours, name)
    mine = copy.deepcopy(ours).merge_and_unload()
    want = copy.deepcopy(theirs).merge_and_unload()
    a, b = mine.state_dict(), want.state_dict()
    assert set(a) == set(b)
    assert max(max_diff(a[k], b[k]) for k in a) <= 1e-6
    assert max_diff(run(mine, name), adapted) <= 1e-5
    assert not any(hasattr(m, "boft_R") for m in mine.modules())


@pytest.mark.parametrize("safe", [False, True])
@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_merge_then_unmerge_restores_the_base(name, kwargs, safe):
    ours, _ = pair(name, **kwargs)
    ours.eval()
    adapted = run(ours, name)
    before = {k: v.clone() for k, v in ours.get_base_model().state_dict().items() if "base_layer" in k}
    ours.merge_adapter(safe_merge=safe)
    assert all(layer.merged for layer in boft_layers(ours).values())
    changed = ours.get_base_model().state_dict()
    assert max(max_diff(changed[k], v) for k, v in before.items()) > 1e-3
    assert max_diff(run(ours, name), adapted) <= 1e-5
    ours.unmerge_adapter()
    after = ours.get_base_model().state_dict()
    assert max(max_diff(after[k], v) for k, v in before.items()) <= 1e-6
    assert max_diff(run(ours, name), adapted) <= 1e-6


@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_safe_merge_refuses_non_finite_and_changes_nothing(name, kwargs):
    ours, _ = pair(name, **kwargs)
    layer = next(iter(boft_layers(ours).values()))
    with torch.no_grad():
        layer.boft_s["default"][0] = float("inf")
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(MergeError, match="NaN/inf"):
        ours.merge_and_unload(safe_merge=True)
    with pytest.raises(MergeError, match="default"):
        layer.merge(safe_merge=True)
    assert not layer.merged and not any(m.merged for m in boft_layers(ours).values())
    after = ours.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if not torch.isinf(v).any())


def test_two_adapters_merged_together_equal_peft():
    """merge_adapter(['default', 'other']) folds both in that order (W' = s2 s1 ⊙ W M1^T M2^T), as peft."""
    import peft

    kwargs = dict(target_modules=["q_proj", "v_proj"], boft_block_size=4)
    second = dict(target_modules=["v_proj", "o_proj"], boft_block_size=0, boft_block_num=2)
    ours, theirs = pair("llama", **kwargs)
    ours.add_adapter("other", surgery.BOFTConfig(**second))
    perturb_boft(ours, seed=3, adapter="other")
    theirs.add_adapter("other", peft.BOFTConfig(**second))
    peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours, adapter_name="other"),
                                   adapter_name="other")
    for model in (ours, theirs):
        model.base_model.merge_adapter(["default", "other"])
    a, b = ours.get_base_model().state_dict(), theirs.get_base_model().state_dict()
    assert max(max_diff(a[k], b[k]) for k in b if "base_layer" in k) <= 1e-6
    v_proj = boft_layers(ours)["model.layers.0.self_attn.v_proj"]
    assert v_proj.merged_adapters == ["default", "other"]
    ours.unmerge_adapter()
    base = MODELS["llama"][0]().state_dict()
    restored = ours.get_base_model().state_dict()
    assert max_diff(restored["model.layers.0.self_attn.v_proj.base_layer.weight"],
                    base["model.layers.0.self_attn.v_proj.weight"]) <= 1e-6


def test_disabled_while_merged_unmerges_and_equals_the_base():
    ours, _ = pair("conv", target_modules=["conv2d", "conv2d_strided"], boft_block_size=9)
    ours.eval()
    base_out = run(MODELS["conv"][0](), "conv")
    ours.merge_adapter()
    with ours.disable_adapter():
        assert max_diff(run(ours, "conv"), base_out) <= 1e-6   # unmerged first: orthogonal round trip
    assert not any(m.merged for m in boft_layers(ours).values())
