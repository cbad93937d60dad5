"""OFT merge, safe merge, unmerge, several adapters and half precision, against PEFT's merged weights."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import surgery
from surgery.errors import MergeError
from tests.support.helpers import max_diff

from .pairs import inputs, pair, perturb

pytest.importorskip("peft")

KINDS = [("linear", dict(oft_block_size=4)), ("linear", dict(oft_block_size=8, use_cayley_neumann=False)),
         ("linear", dict(oft_block_size=4, block_share=True, coft=True, eps=0.1)),
         ("conv1x1", dict(oft_block_size=4)), ("conv3x3", dict(oft_block_size=9)),
         ("embedding", dict(oft_block_size=3)), ("embedding", dict(r=2, oft_block_size=0, use_cayley_neumann=False))]
IDS = [f"{k}-{i}" for i, (k, _) in enumerate(KINDS)]


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind, config", KINDS, ids=IDS)
@pytest.mark.parametrize("safe", [False, True])
def test_merge_and_unload_equals_peft(kind, config, safe):
    ours, theirs = pair(kind, **config)
    x = inputs(kind)
    with torch.no_grad():
        adapted = ours(x)
        mine = copy.deepcopy(ours).merge_and_unload(safe_merge=safe)
        peft_merged = copy.deepcopy(theirs).merge_and_unload(safe_merge=safe)
        a, b = mine.state_dict(), peft_merged.state_dict()
        assert set(a) == set(b)
        assert max(max_diff(a[k], b[k]) for k in a) <= 1e-5
        assert max_diff(mine(x), peft_merged(x)) <= 1e-5
        if kind != "conv3x3":   # PEFT's k > 1 conv forward is not what its merge computes (see conv.py)
            assert max_diff(mine(x), adapted) <= 1e-4
        else:
            assert max_diff(mine(x), adapted) > 1e-3


@pytest.mark.parametrize("kind, config", KINDS, ids=IDS)
def test_unmerge_restores_the_base_weight(kind, config):
    ours, _ = pair(kind, **config)
    layer = ours.base_model.model.layer
    before = layer.get_base_layer().weight.detach().clone()
    x = inputs(kind)
    with torch.no_grad():
        adapted = ours(x)
        ours.merge_adapter()
        assert max_diff(layer.get_base_layer().weight, before) > 1e-3
        ours.unmerge_adapter()
        assert max_diff(layer.get_base_layer().weight, before) <= 1e-5
        assert max_diff(ours(x), adapted) <= 1e-5


def test_safe_merge_refuses_non_finite_and_leaves_the_layer_untouched():
    ours, _ = pair("linear", oft_block_size=4)
    layer = ours.base_model.model.layer
    with torch.no_grad():
        layer.oft_R["default"].weight[0, 0] = float("inf")
    before = layer.get_base_layer().weight.detach().clone()
    with pytest.raises(MergeError, match="NaN/inf"):
        ours.merge_adapter(safe_merge=True)
    assert torch.equal(layer.get_base_layer().weight, before) and not layer.merged
    with pytest.raises(MergeError, match="adapter default seems to be broken"):
        layer.merge(safe_merge=True)
    assert torch.equal(layer.get_base_layer().weight, before) and not layer.merged


@pytest.mark.parametrize("kind", ["linear", "embedding"])
def test_two_adapters_merged_in_order_equal_peft(kind):
    """Both adapters merged at once: PEFT folds them in the order given (W BD_1^T BD_2^T); so does surgery."""
    import peft

    ours, theirs = pair(kind, oft_block_size=4)
    other = dict(target_modules=["layer"], r=2, oft_block_size=0)
    ours.add_adapter("other", surgery.OFTConfig(**other))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.add_adapter("other", peft.OFTConfig(**other))
    perturb(ours, seed=9)
    for name in ("default", "other"):
        peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours, adapter_name=name),
                                       adapter_name=name)
    mine, peft_layer = ours.base_model.model.layer, theirs.base_model.model.layer
    before = mine.get_base_layer().weight.detach().clone()
    with torch.no_grad():
        mine.merge(adapter_names=["default", "other"])
        peft_layer.merge(adapter_names=["default", "other"])
        assert max_diff(mine.get_base_layer().weight, peft_layer.get_base_layer().weight) <= 1e-5
        mine.unmerge()
        peft_layer.unmerge()
        assert max_diff(mine.get_base_layer().weight, before) <= 1e-5
    mine.set_adapter(["default", "other"])
    peft_layer.set_adapter(["default", "other"])
    x = inputs(kind)
    with torch.no_grad():   # both rotations in turn, as PEFT's forward
        assert max_diff(mine(x), peft_layer(x)) <= 1e-5


def test_delete_adapter_removes_its_parameters():
    ours, _ = pair("linear", oft_block_size=4)
    ours.add_adapter("other", surgery.OFTConfig(target_modules=["layer"], oft_block_size=8))
    layer = ours.base_model.model.layer
    assert set(layer.oft_R) == {"default", "other"} and layer.oft_block_size == {"default": 4, "other": 8}
    ours.delete_adapter("other")
    assert set(layer.oft_R) == {"default"} and set(layer.r) == {"default"}
    assert not any(".other." in k for k in ours.state_dict())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["linear", "embedding"])
def test_half_precision_base_matches_peft(kind, dtype):
    """float32 adapters on a half base (autocast_adapter_dtype, both libraries): outputs within one rounding of
    the base dtype, merged weights bit-identical."""
    ours, theirs = pair(kind, dtype=dtype, oft_block_size=4)
    assert ours.base_model.model.layer.rotations["default"].weight.dtype == torch.float32
    x = inputs(kind)
    x = x.to(dtype) if x.is_floating_point() else x
    with torch.no_grad():
        got, want = ours(x), theirs(x)
        assert got.dtype == want.dtype == dtype
        assert max_diff(got, want) <= 2e-2
        a = copy.deepcopy(ours).merge_and_unload().state_dict()
        b = copy.deepcopy(theirs).merge_and_unload().state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
