"""(IA)^3 layers against PEFT on the same weights, per base layer type: forward, gradients, merge, safe merge,
unmerge, several adapters, delete. Tolerances: float32 outputs and gradients 1e-6, merged weights 1e-6 (an
elementwise product: in practice bit-identical), unmerge 1e-5 (a division by l + 1e-8)."""
from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import surgery
from surgery.errors import MergeError
from tests.support.helpers import max_diff


class Holder(nn.Module):
    """One layer to adapt (`layer`) after a fixed one, so input gradients flow through the adapter."""

    def __init__(self, layer: nn.Module, pre: nn.Module):
        super().__init__()
        self.pre, self.layer = pre, layer

    def forward(self, x):
        return self.layer(self.pre(x))


def _holder(kind: str, groups: int = 1) -> tuple[Holder, torch.Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "linear":
        return Holder(nn.Linear(6, 5), nn.Linear(6, 6)), torch.randn(3, 4, 6, generator=g)
    if kind == "conv1d":   # transformers' Conv1D: weight (in, out)
        layer = Conv1D(5, 6)
        nn.init.normal_(layer.bias)
        return Holder(layer, nn.Linear(6, 6)), torch.randn(3, 4, 6, generator=g)
    if kind == "conv2d":
        return (Holder(nn.Conv2d(4, 6, 3, padding=1, groups=groups), nn.Conv2d(4, 4, 1)),
                torch.randn(2, 4, 5, 5, generator=g))
    if kind == "conv3d":
        return Holder(nn.Conv3d(2, 4, (1, 3, 3), padding=(0, 1, 1)), nn.Conv3d(2, 2, 1)), torch.randn(
            2, 2, 3, 4, 4, generator=g)
    raise ValueError(kind)


KINDS = [("linear", 1), ("conv1d", 1), ("conv2d", 1), ("conv2d", 2), ("conv3d", 1)]
IDS = ["linear", "conv1d", "conv2d", "conv2d-grouped", "conv3d"]


def _pair(kind: str, groups: int, feedforward: bool, **extra):
    """(surgery model, peft model, input) with the same perturbed ia3_l (multiplied by 1 + N(0, 0.3))."""
    base, x = _holder(kind, groups)
    kwargs = dict(target_modules=["layer"], feedforward_modules=["layer"] if feedforward else [], **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.IA3Config(**kwargs))
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.IA3Config(**kwargs))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, p in theirs.named_parameters():
            if p.requires_grad:
                p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g))
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs, x


def _ia3_layer(model):
    return model.get_base_model().layer


@pytest.mark.parametrize("feedforward", [False, True], ids=["output-scaled", "input-scaled"])
@pytest.mark.parametrize("kind, groups", KINDS, ids=IDS)
def test_forward_and_gradients_equal_peft(kind, groups, feedforward):
    ours, theirs, x = _pair(kind, groups, feedforward)
    want_shape = tuple(_ia3_layer(theirs).ia3_l["default"].shape)
    assert tuple(_ia3_layer(ours).ia3_l["default"].shape) == want_shape
    outs, grads = [], []
    for model in (ours, theirs):
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        outs.append(out.detach())
        grads.append((_ia3_layer(model).ia3_l["default"].grad, xi.grad))
    assert max_diff(outs[0], outs[1]) <= 1e-6
    assert max_diff(grads[0][0], grads[1][0]) <= 1e-6 and grads[0][0].abs().max() > 0
    assert max_diff(grads[0][1], grads[1][1]) <= 1e-6
    with ours.disable_adapter():
        base_out = ours(x)
    assert max_diff(outs[0], base_out) > 1e-3   # the perturbed vector is not the identity


@pytest.mark.parametrize("safe", [False, True], ids=["merge", "safe-merge"])
@pytest.mark.parametrize("feedforward", [False, True], ids=["output-scaled", "input-scaled"])
@pytest.mark.parametrize("kind, groups", KINDS, ids=IDS)
def test_merge_and_unmerge_equal_peft(kind, groups, feedforward, safe):
    ours, theirs, x = _pair(kind, groups, feedforward)
    with torch.no_grad():
        adapted = ours(x)
    base = _ia3_layer(ours).get_base_layer()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    ours.merge_adapter(safe_merge=safe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.merge_adapter(safe_merge=safe)
    their_base = _ia3_layer(theirs).get_base_layer()
    for key, value in base.state_dict().items():
        assert max_diff(value, their_base.state_dict()[key]) <= 1e-6, key
    if not feedforward and base.bias is not None:   # output scaling scales the bias too
        assert max_diff(base.bias, before["bias"]) > 1e-3
    if feedforward:   # input scaling leaves it
        assert torch.equal(base.bias, before["bias"])
    with torch.no_grad():
        assert max_diff(ours(x), adapted) <= 1e-5
    ours.unmerge_adapter()
    for key, value in base.state_dict().items():
        assert max_diff(value, before[key]) <= 1e-5, key
    with torch.no_grad():
        assert max_diff(ours(x), adapted) <= 1e-5


@pytest.mark.parametrize("kind, groups", KINDS, ids=IDS)
def test_safe_merge_refuses_non_finite_and_changes_nothing(kind, groups):
    ours, _, x = _pair(kind, groups, feedforward=False)
    layer = _ia3_layer(ours)
    with torch.no_grad():
        layer.ia3_l["default"].view(-1)[0] = float("inf")
    before = {k: v.clone() for k, v in layer.get_base_layer().state_dict().items()}
    with pytest.raises(MergeError, match="NaN/inf"):
        layer.merge(safe_merge=True)
    with pytest.raises(MergeError, match="NaN/inf"):
        ours.merge_and_unload(safe_merge=True)
    after = layer.get_base_layer().state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert layer.merged_adapters == []


def test_two_active_adapters_multiply_their_vectors_as_peft():
    for feedforward in (False, True):
        ours, theirs, x = _pair("linear", 1, feedforward)
        for model, lib in ((ours, surgery), (theirs, peft)):
            model.add_adapter("other", lib.IA3Config(target_modules=["layer"], feedforward_modules=[]))
        other = _ia3_layer(theirs).ia3_l["other"]
        # the layer's first adapter fixed the scaled side: 'other' follows it, as in PEFT
        assert _ia3_layer(ours).ia3_l["other"].shape == other.shape
        with torch.no_grad():
            other.mul_(torch.linspace(0.5, 1.5, other.numel()).reshape(other.shape))
            _ia3_layer(ours).ia3_l["other"].copy_(other)
        for model in (ours, theirs):
            _ia3_layer(model).set_adapter(["default", "other"])
        with torch.no_grad():
            got, want = ours(x), theirs(x)
            assert max_diff(got, want) <= 1e-6
            _ia3_layer(ours).set_adapter(["default"])
            assert max_diff(ours(x), got) > 1e-3   # the product, not one vector
            _ia3_layer(ours).set_adapter(["default", "other"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merged_theirs = copy.deepcopy(theirs).merge_and_unload(adapter_names=["default", "other"])
        merged_ours = copy.deepcopy(ours).merge_and_unload(adapter_names=["default", "other"])
        assert max_diff(merged_ours.layer.weight, merged_theirs.layer.weight) <= 1e-6
        with torch.no_grad():
            assert max_diff(merged_ours(x), want) <= 1e-5


def test_delete_adapter_removes_its_vector_only():
    ours, _, x = _pair("conv2d", 1, feedforward=True)
    ours.add_adapter("other", surgery.IA3Config(target_modules=["layer"], feedforward_modules=["layer"]))
    layer = _ia3_layer(ours)
    assert set(layer.ia3_l) == {"default", "other"}
    with torch.no_grad():
        default_out = ours(x)
    ours.delete_adapter("other")
    assert set(layer.ia3_l) == {"default"}
    assert not any("other" in k for k in ours.state_dict())
    with torch.no_grad():
        assert torch.equal(ours(x), default_out)


def test_init_false_draws_peft_numbers_and_true_is_the_identity():
    base, x = _holder("linear")
    torch.manual_seed(7)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.IA3Config(target_modules=["layer"], feedforward_modules=[],
                                                                      init_ia3_weights=False))
    torch.manual_seed(7)
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.IA3Config(target_modules=["layer"],
                                                                          feedforward_modules=[], init_ia3_weights=False))
    assert torch.equal(_ia3_layer(ours).ia3_l["default"], _ia3_layer(theirs).ia3_l["default"])
    identity = surgery.get_peft_model(copy.deepcopy(base), surgery.IA3Config(target_modules=["layer"],
                                                                              feedforward_modules=["layer"]))
    with torch.no_grad():
        assert torch.equal(identity(x), base(x))


def test_half_precision_base_matches_peft():
    """A bfloat16 base: the vectors are kept in float32 (PEFT's autocast_adapter_dtype) and the casts are PEFT's."""
    x = _holder("linear")[1].to(torch.bfloat16)
    for feedforward in (False, True):
        kwargs = dict(target_modules=["layer"], feedforward_modules=["layer"] if feedforward else [])
        ours = surgery.get_peft_model(_holder("linear")[0].to(torch.bfloat16), surgery.IA3Config(**kwargs))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = peft.get_peft_model(_holder("linear")[0].to(torch.bfloat16), peft.IA3Config(**kwargs))
        assert _ia3_layer(ours).ia3_l["default"].dtype == _ia3_layer(theirs).ia3_l["default"].dtype == torch.float32
        with torch.no_grad():
            _ia3_layer(theirs).ia3_l["default"].mul_(1.37)
            _ia3_layer(ours).ia3_l["default"].copy_(_ia3_layer(theirs).ia3_l["default"])
            got, want = ours(x), theirs(x)
        assert got.dtype == want.dtype == torch.bfloat16
        assert torch.equal(got, want)
