"""FourierFT layers against PEFT on the same spectra, for nn.Linear and GPT-2's Conv1D, with both evaluations of
the update (FFTs of x, or the dense ΔW): forward, gradients, merge, safe merge, unmerge, two adapters, delete,
the eval cache of ΔW, and PEFT's initial draws. Tolerances (float32): outputs and gradients 1e-6 relative to
the largest value, merged weights 1e-6, outputs after a merge 1e-5."""
from __future__ import annotations

import copy

import peft
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import surgery
from surgery.errors import MergeError
from surgery.methods.fourierft import layer as layer_module
from tests.support.helpers import max_diff


class Holder(nn.Module):
    def __init__(self, layer: nn.Module, in_f: int):
        super().__init__()
        self.pre, self.layer = nn.Linear(in_f, in_f), layer

    def forward(self, x):
        return self.layer(self.pre(x))


def _holder(kind: str) -> tuple[Holder, torch.Tensor]:
    torch.manual_seed(0)
    layer = nn.Linear(12, 10) if kind == "linear" else Conv1D(10, 12)   # Conv1D(nf=out, nx=in): weight (12, 10)
    return Holder(layer, 12), torch.randn(3, 4, 12, generator=torch.Generator().manual_seed(1))


def _pair(kind: str, **kwargs):
    """(surgery, peft, x): the same spectra (PEFT's N(0, 1) draw, scaled by 0.1)."""
    base, x = _holder(kind)
    kwargs = dict(target_modules=["layer"], n_frequency=40, fan_in_fan_out=kind == "conv1d", **kwargs)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.FourierFTConfig(**kwargs))
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.FourierFTConfig(**kwargs))
    with torch.no_grad():
        theirs.get_base_model().layer.fourierft_spectrum["default"].mul_(0.1)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs, x


def _layer(model):
    return model.get_base_model().layer


@pytest.fixture(params=[False, True], ids=["dense", "fft"])
def evaluation(request, monkeypatch):
    monkeypatch.setattr(layer_module, "prefers_fft", lambda *shape: request.param)
    return request.param


def _close(got, want, rel=1e-6):
    assert (got - want).abs().max() <= rel * want.abs().max()


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_forward_and_gradients_equal_peft(kind, evaluation):
    ours, theirs, x = _pair(kind)
    assert torch.equal(_layer(ours).indices["default"], _layer(theirs).indices["default"])
    results = []
    for model in (ours, theirs):
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results.append((out.detach(), _layer(model).fourierft_spectrum["default"].grad, xi.grad))
    for got, want in zip(*results):
        _close(got, want)
    with ours.disable_adapter(), torch.no_grad():
        assert max_diff(ours(x), results[0][0]) > 1e-3


@pytest.mark.parametrize("safe", [False, True], ids=["merge", "safe-merge"])
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_merge_and_unmerge_equal_peft(kind, safe):
    ours, theirs, x = _pair(kind)
    with torch.no_grad():
        adapted = ours(x)
    weight = _layer(ours).get_base_layer().weight
    before = weight.detach().clone()
    ours.merge_adapter(safe_merge=safe)
    theirs.merge_adapter(safe_merge=safe)
    assert max_diff(weight, _layer(theirs).get_base_layer().weight) <= 1e-6
    assert max_diff(weight, before) > 1e-3
    with torch.no_grad():
        assert max_diff(ours(x), adapted) <= 1e-5
    ours.unmerge_adapter()
    assert max_diff(weight, before) <= 1e-6
    merged = copy.deepcopy(ours).merge_and_unload()
    assert isinstance(merged.layer, (nn.Linear, Conv1D))
    with torch.no_grad():
        assert max_diff(merged(x), adapted) <= 1e-5


def test_safe_merge_refuses_non_finite_and_changes_nothing():
    ours, _, _ = _pair("linear")
    with torch.no_grad():
        _layer(ours).fourierft_spectrum["default"][0] = float("nan")
    before = _layer(ours).get_base_layer().weight.detach().clone()
    with pytest.raises(MergeError, match="NaN/inf"):
        ours.merge_and_unload(safe_merge=True)
    assert torch.equal(_layer(ours).get_base_layer().weight, before) and _layer(ours).merged_adapters == []


def test_two_active_adapters_add_up_as_in_peft(evaluation):
    ours, theirs, x = _pair("linear")
    for model, lib in ((ours, surgery), (theirs, peft)):
        model.add_adapter("other", lib.FourierFTConfig(target_modules=["layer"], n_frequency=25, random_loc_seed=3,
                                                       scaling=20.0))
    with torch.no_grad():
        _layer(ours).fourierft_spectrum["other"].copy_(_layer(theirs).fourierft_spectrum["other"])
    for model in (ours, theirs):
        _layer(model).set_adapter(["default", "other"])
    with torch.no_grad():
        _close(ours(x), theirs(x))
    merged_ours = copy.deepcopy(ours).merge_and_unload(adapter_names=["default", "other"])
    merged_theirs = copy.deepcopy(theirs).merge_and_unload(adapter_names=["default", "other"])
    assert max_diff(merged_ours.layer.weight, merged_theirs.layer.weight) <= 1e-6


def test_delete_adapter_removes_everything_of_it():
    ours, _, x = _pair("linear")
    ours.add_adapter("other", surgery.FourierFTConfig(target_modules=["layer"], n_frequency=25))
    layer = _layer(ours)
    with torch.no_grad():
        ours(x)
    ours.delete_adapter("other")
    for holder in (layer.fourierft_spectrum, layer.indices, layer.fourierft_n_frequency, layer.fourierft_scaling,
                   layer.fourierft_random_loc_seed, layer._index_cache, layer._delta_cache):
        assert "other" not in holder


def test_eval_keeps_delta_until_the_spectrum_changes(monkeypatch):
    """No gradient wanted: ΔW is built once and reused; an optimizer step or load_state_dict rebuilds it."""
    monkeypatch.setattr(layer_module, "prefers_fft", lambda *shape: False)
    ours, theirs, x = _pair("linear")
    calls = []
    original = layer_module.dense_delta
    monkeypatch.setattr(layer_module, "dense_delta", lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.no_grad():
        first = ours(x)
        assert torch.equal(ours(x), first) and len(calls) == 1
    optimizer = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.1)
    ours(x).square().sum().backward()   # with grad: built again, not cached
    assert len(calls) == 2
    optimizer.step()
    with torch.no_grad():
        stepped = ours(x)
    assert len(calls) == 3 and max_diff(stepped, first) > 1e-4
    ours.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        _close(ours(x), theirs(x))
    assert len(calls) == 4


def test_initial_spectra_are_peft_s_draws():
    base, x = _holder("linear")
    kwargs = dict(target_modules=["layer"], n_frequency=30)
    torch.manual_seed(11)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.FourierFTConfig(**kwargs))
    torch.manual_seed(11)
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.FourierFTConfig(**kwargs))
    assert torch.equal(_layer(ours).fourierft_spectrum["default"], _layer(theirs).fourierft_spectrum["default"])
    zero = surgery.get_peft_model(copy.deepcopy(base), surgery.FourierFTConfig(init_weights=True, **kwargs))
    with torch.no_grad():
        assert torch.equal(zero(x), base(x))


def test_half_precision_base_matches_peft():
    """A bfloat16 base: the spectrum is kept in float32 (PEFT's autocast_adapter_dtype), ΔW x in float32, the
    sum cast back to bfloat16."""
    base, x = _holder("linear")
    kwargs = dict(target_modules=["layer"], n_frequency=40)
    theirs = peft.get_peft_model(copy.deepcopy(base).to(torch.bfloat16), peft.FourierFTConfig(**kwargs))
    ours = surgery.get_peft_model(copy.deepcopy(base).to(torch.bfloat16), surgery.FourierFTConfig(**kwargs))
    assert _layer(ours).fourierft_spectrum["default"].dtype == torch.float32
    ours.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        got, want = ours(x.to(torch.bfloat16)), theirs(x.to(torch.bfloat16))
    assert got.dtype == want.dtype == torch.bfloat16
    assert max_diff(got, want) <= 2 ** -7 * want.abs().max().item()   # one bfloat16 rounding at most
