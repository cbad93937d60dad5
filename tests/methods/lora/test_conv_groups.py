"""LoRA on grouped convolutions (groups > 1) against real PEFT, and several adapters on conv layers.

PEFT 0.21.2's _ConvNd: lora_A (r, in, *kernel) reads every input channel, lora_B is a 1x1 conv with the base's
groups, (out, r / groups, 1...); r must be a multiple of groups; merging raises NotImplementedError. surgery
matches the shapes, keys, forward and gradients (float32, 1e-5 relative), refuses the merge with a
MergeError that is also a NotImplementedError, and leaves the model unchanged when it does.
"""
from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch
from torch import nn

import surgery
from surgery.methods.lora.conv import GroupedConvMergeError
from tests.support.helpers import max_diff, perturb_adapters

from .test_dora_conv_embedding import ConvNet

peft = pytest.importorskip("peft")

TOL = 1e-5

GROUPED = {   # name -> (ConvNet kwargs, r)
    "conv2d_g2": (dict(dim=2, groups=2), 4),
    "conv2d_g2_strided": (dict(dim=2, groups=2, stride=2, bias=False), 2),
    "conv2d_depthwise": (dict(dim=2, c_in=4, c_out=8, groups=4), 4),
    "conv2d_g2_1x1": (dict(dim=2, groups=2, kernel_size=1, padding=0), 6),
    "conv1d_g2": (dict(dim=1, groups=2), 4),
    "conv3d_g2": (dict(dim=3, groups=2, kernel_size=(1, 3, 3), padding=(0, 1, 1)), 2),
}


def _base(name):
    torch.manual_seed(0)
    return ConvNet(**GROUPED[name][0])


def _pair(name, **kwargs):
    base = _base(name)
    config = dict(target_modules=["conv"], r=GROUPED[name][1], lora_alpha=8, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**config))
    perturb_adapters(theirs)
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**config))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return base, theirs.eval(), ours.eval()


def _close(got, want, tol=TOL):
    assert max_diff(got, want) <= tol * max(want.float().abs().max().item(), 1.0), max_diff(got, want)


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("name", list(GROUPED))
def test_shapes_keys_forward_and_gradients_equal_peft(name, use_dora):
    base, theirs, ours = _pair(name, use_dora=use_dora)
    theirs_sd, ours_sd = theirs.state_dict(), ours.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in theirs_sd.items()}
    conv, r = base.conv, GROUPED[name][1]
    layer = ours.get_base_model().conv
    assert layer.lora_A["default"].weight.shape == (r, conv.in_channels, *conv.kernel_size)
    assert layer.lora_B["default"].weight.shape == (conv.out_channels, r // conv.groups) + (1,) * (base.dim)
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    x = base.inputs()
    with torch.no_grad():
        want = theirs(x)
        assert max_diff(want, base(x)) > 1e-3
        _close(ours(x), want)
    for model in (theirs, ours):
        model.train()
        model(x).square().sum().backward()
    grads = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    for n, p in ours.named_parameters():
        if p.requires_grad:
            _close(p.grad, grads[n], tol=1e-4)


@pytest.mark.parametrize("name", ["conv2d_g2", "conv1d_g2"])
def test_fresh_adapter_is_the_identity_and_its_init_follows_peft(name):
    base = _base(name)
    model = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(target_modules=["conv"], r=4))
    x = base.inputs()
    with torch.no_grad():
        assert torch.equal(model(x), base(x))
    layer = model.get_base_model().conv
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
    bound = 1 / (base.conv.in_channels * 9 if base.dim == 2 else base.conv.in_channels * 3) ** 0.5
    assert 0 < layer.lora_A["default"].weight.abs().max() <= bound   # kaiming_uniform(a=sqrt(5)) over fan_in


@pytest.mark.parametrize("safe", [False, True])
@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_is_refused_and_changes_nothing(safe, use_dora):
    model_base = nn.Sequential()
    model_base.add_module("plain", nn.Conv2d(4, 4, 3, padding=1))   # merged first, then rolled back
    model_base.add_module("conv", nn.Conv2d(4, 6, 3, padding=1, groups=2))
    model = surgery.get_peft_model(model_base, surgery.LoraConfig(target_modules=["plain", "conv"], r=2,
                                                                  use_dora=use_dora))
    perturb_adapters(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for call in (lambda: model.merge_adapter(safe_merge=safe), lambda: model.merge_and_unload(safe_merge=safe)):
        with pytest.raises(GroupedConvMergeError, match="grouped convolution") as caught:
            call()
        assert isinstance(caught.value, surgery.SurgeryError) and isinstance(caught.value, NotImplementedError)
        after = model.state_dict()
        assert list(after) == list(before)
        assert all(max_diff(after[k], v) <= 1e-6 for k, v in before.items())
        assert not any(layer.merged_adapters for layer in (model.get_base_model().plain, model.get_base_model().conv))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(nn.Sequential(nn.Conv2d(4, 6, 3, groups=2)),
                                     peft.LoraConfig(target_modules=["0"], r=2))
    with pytest.raises(NotImplementedError):   # the oracle refuses too
        theirs.merge_adapter()


def test_rank_must_be_a_multiple_of_groups():
    base = ConvNet(2, groups=2)
    with pytest.raises(surgery.SurgeryError, match="multiple of groups"):
        surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(target_modules=["conv"], r=3))
    assert type(base.conv) is nn.Conv2d
    with pytest.raises(ValueError, match="divisible by groups"), warnings.catch_warnings():   # and so does PEFT
        warnings.simplefilter("ignore")
        peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(target_modules=["conv"], r=3))
    # rank_pattern gives the grouped conv a valid rank of its own
    model = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(target_modules=["conv", "head"], r=3,
                                                                          rank_pattern={"conv": 4}))
    assert model.get_base_model().conv.r["default"] == 4


def test_plan_warns_that_a_grouped_conv_cannot_merge(caplog):
    with caplog.at_level(logging.WARNING):
        surgery.get_peft_model(ConvNet(2, groups=2), surgery.LoraConfig(target_modules=["conv"], r=2))
    assert any("cannot be merged" in record.getMessage() for record in caplog.records)


# -- several adapters on conv layers (a second adapter once asked the wrapper for `groups`) ----------------------
class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.plain = nn.Conv2d(4, 4, 3, padding=1)
        self.grouped = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.grouped(torch.relu(self.plain(x))).mean((2, 3)))


def _two_adapter_models(second_dora: bool = False):
    models = []
    for lib in (peft, surgery):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = lib.get_peft_model(TwoConvs(), lib.LoraConfig(target_modules=["plain", "grouped"], r=2),
                                   adapter_name="a")
            m.add_adapter("b", lib.LoraConfig(target_modules=["plain", "grouped"], r=4, lora_alpha=3,
                                              use_dora=second_dora))
        models.append(m)
    theirs, ours = models
    perturb_adapters(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs.eval(), ours.eval()


def test_second_adapter_each_alone_equals_peft():
    theirs, ours = _two_adapter_models(second_dora=True)
    x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for adapter in ("a", "b"):
            theirs.set_adapter(adapter)
            ours.set_adapter(adapter)
            _close(ours(x), theirs(x))


def test_mixed_batch_on_conv_layers_equals_peft():
    theirs, ours = _two_adapter_models()
    x = torch.randn(4, 4, 5, 5, generator=torch.Generator().manual_seed(2))
    names = ["a", "b", "__base__", "b"]
    with torch.no_grad():
        _close(ours(x, adapter_names=names), theirs(x, adapter_names=names))


def test_load_adapter_on_a_conv_model_equals_peft(tmp_path):
    theirs, ours = _two_adapter_models(second_dora=True)
    theirs.save_pretrained(tmp_path)   # non-default adapters: one subfolder each
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    loaded = surgery.PeftModel.from_pretrained(TwoConvs(), tmp_path / "a", adapter_name="a")
    loaded.load_adapter(tmp_path / "b", adapter_name="b")
    loaded.load_adapter(tmp_path / "b", adapter_name="c")   # the same weights under a third name
    loaded.eval()
    with torch.no_grad():
        for adapter, same_as in (("a", "a"), ("b", "b"), ("c", "b")):
            theirs.set_adapter(same_as)
            loaded.set_adapter(adapter)
            _close(loaded(x), theirs(x))
        _close(loaded(x, adapter_names=["a", "c"]), ours(x, adapter_names=["a", "b"]))
