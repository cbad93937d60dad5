"""LoRA on torch.nn.MultiheadAttention: keys, outputs, gradients and merges equal real PEFT's for the same
weights; checkpoints load both ways; what PEFT refuses is refused at plan time.

PEFT changes its base weights by a rounding on every forward (it merges and unmerges around the call); surgery does
not. So every comparison below is against a PEFT model's first forward (or merge) after the weights were copied."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import surgery
from surgery.methods.lora.mha import MultiheadAttention, OutProj
from tests.support.helpers import max_diff

peft = pytest.importorskip("peft")

E, HEADS, TOL = 8, 2, 1e-6
PATH = "base_model.model.mha"


class Attn(nn.Module):
    def __init__(self, batch_first: bool = True, bias: bool = True, **mha_kwargs):
        super().__init__()
        torch.manual_seed(0)
        self.mha = nn.MultiheadAttention(E, HEADS, batch_first=batch_first, bias=bias, **mha_kwargs)
        self.lin0 = nn.Linear(E, 2)

    def forward(self, x):
        out, _ = self.mha(x, x, x)
        return self.lin0(out)


def inputs(batch_first: bool = True, dtype=torch.float32) -> torch.Tensor:
    x = torch.randn(2, 5, E, generator=torch.Generator().manual_seed(7))
    return (x if batch_first else x.transpose(0, 1)).to(dtype)


def pair(base: nn.Module, adapters=(("default", {}),), **kwargs):
    """(peft model, surgery model) with the same adapters; surgery's weights copied from peft's checkpoint."""
    kwargs = {"target_modules": ["mha"], "init_lora_weights": False, "r": 4, "lora_alpha": 8, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ours = None
        for name, extra in adapters:
            if theirs is None:
                theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**{**kwargs, **extra}), name)
                ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**{**kwargs, **extra}), name)
            else:
                theirs.add_adapter(name, peft.LoraConfig(**{**kwargs, **extra}))
                ours.add_adapter(name, surgery.LoraConfig(**{**kwargs, **extra}))
            surgery.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs, adapter_name=name), name)
    return theirs.eval(), ours.eval()


CASES = [(bf, bias, kw) for bf in (True, False) for bias in (True, False)
         for kw in ({}, {"use_rslora": True, "lora_alpha": 3}, {"r": 2, "init_lora_weights": "gaussian"})]
CASES += [(True, True, {"lora_bias": True}), (False, True, {"lora_bias": True, "r": 3})]


@pytest.mark.parametrize("batch_first, bias, kwargs", CASES)
def test_keys_outputs_gradients_and_merges_equal_peft(batch_first, bias, kwargs):
    base = Attn(batch_first, bias)
    theirs, ours = pair(base, **kwargs)
    if kwargs.get("init_lora_weights") == "gaussian":   # B starts at zero: make the adapter do something
        with torch.no_grad():
            for model in (theirs, ours):
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.copy_(torch.linspace(-0.5, 0.5, p.numel()).view_as(p))
    assert list(ours.state_dict()) == list(theirs.state_dict())   # same keys, same order
    assert list(surgery.get_peft_model_state_dict(ours)) == list(peft.get_peft_model_state_dict(theirs))
    assert f"{PATH}.base_layer.out_proj.lora_A.weight" in surgery.get_peft_model_state_dict(ours)
    x = inputs(batch_first)
    want, got = theirs(x), ours(x)
    assert max_diff(want, base(x)) > 1e-3, "the adapter must change the output"
    assert max_diff(got, want) <= TOL
    want.sum().backward()
    got.sum().backward()
    grads = {n: p.grad for n, p in theirs.named_parameters() if p.grad is not None}
    assert {n for n, p in ours.named_parameters() if p.grad is not None} == set(grads)
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
        n for n, p in theirs.named_parameters() if p.requires_grad}
    for name, p in ours.named_parameters():
        if p.grad is not None:
            assert max_diff(p.grad, grads[name]) <= 1e-5, name
    with torch.no_grad():
        unmerged = ours(x)
        theirs.merge_adapter()
        ours.merge_adapter()
        assert max_diff(ours(x), theirs(x)) <= TOL and max_diff(ours(x), unmerged) <= 1e-5
        ours.unmerge_adapter()
        assert max_diff(ours(x), unmerged) <= 1e-5
        merged_theirs, merged_ours = theirs.merge_and_unload(), ours.merge_and_unload()
        assert list(merged_ours.state_dict()) == list(merged_theirs.state_dict())
        assert set(merged_ours.state_dict()) == set(base.state_dict())
        assert type(merged_ours.mha.out_proj) is type(base.mha.out_proj)
        for key, value in merged_theirs.state_dict().items():
            assert max_diff(merged_ours.state_dict()[key], value) <= 1e-5, key
        assert max_diff(merged_ours(x), merged_theirs(x)) <= 1e-5


def test_the_out_proj_delta_counts_twice_as_in_peft():
    """PEFT folds out_proj's delta in by hand and again through the wrapped Linear's merge; surgery matches that."""
    base = Attn()
    _, ours = pair(base)
    layer = ours.base_model.model.mha
    manual = copy.deepcopy(base)
    with torch.no_grad():
        manual.mha.in_proj_weight += layer.delta_weight("default")
        manual.mha.out_proj.weight += 2 * layer.out_proj_layer.delta_weight("default")
        assert max_diff(ours(inputs()), manual(inputs())) <= TOL


def test_several_adapters_switch_combine_and_delete_as_peft():
    base = Attn()
    x = inputs()
    adapters = (("a", {}), ("b", {"r": 2, "lora_alpha": 5}))
    theirs, ours = pair(base, adapters)
    theirs.set_adapter("b")
    ours.set_adapter("b")
    assert max_diff(ours(x), theirs(x)) <= TOL
    theirs, ours = pair(base, adapters)
    theirs.base_model.set_adapter(["a", "b"])
    ours.base_model.set_adapter(["a", "b"])
    want, got = theirs(x), ours(x)
    assert max_diff(got, want) <= TOL
    want.sum().backward()
    got.sum().backward()   # as PEFT: with several active adapters only the last one gets gradients
    assert {n for n, p in ours.named_parameters() if p.grad is not None} == {
        n for n, p in theirs.named_parameters() if p.grad is not None}
    assert all(".b." in n for n, p in ours.named_parameters() if p.grad is not None)
    theirs, ours = pair(base, adapters)
    theirs.delete_adapter("b")
    ours.delete_adapter("b")
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert max_diff(ours(x), theirs(x)) <= TOL


def test_disable_unload_and_delete_give_the_original_module_back():
    base = Attn()
    x = inputs()
    _, ours = pair(base)
    with torch.no_grad():
        with ours.disable_adapter():
            assert max_diff(ours(x), base(x)) <= TOL
        ours.merge_adapter()
        with ours.disable_adapter():   # disabling unmerges first
            assert max_diff(ours(x), base(x)) <= 1e-5
    unloaded = copy.deepcopy(ours).unload()
    assert type(unloaded.mha) is nn.MultiheadAttention and type(unloaded.mha.out_proj) is type(base.mha.out_proj)
    assert max_diff(unloaded(x), base(x)) <= 1e-5
    ours.delete_adapter("default")   # the last one: the layer goes
    model = ours.get_base_model()
    assert not any(isinstance(m, (MultiheadAttention, OutProj)) for m in model.modules())
    assert set(model.state_dict()) == set(base.state_dict())


def test_both_halves_are_layers_and_the_base_state_dict_is_the_original():
    base = Attn()
    _, ours = pair(base)
    status = {s.name: s for s in surgery.get_layer_status(ours)}
    assert set(status) == {"model.mha", "model.mha.base_layer.out_proj"}
    got = surgery.get_base_model_state_dict(ours)
    assert set(got) == set(base.state_dict())
    for key, value in base.state_dict().items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("direction", ["ours->peft", "peft->ours"])
def test_checkpoints_load_both_ways(tmp_path, direction):
    base = Attn(bias=True)
    theirs, ours = pair(base, lora_bias=True)
    x = inputs()
    want = theirs(x).detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if direction == "ours->peft":
            ours.save_pretrained(tmp_path)
            loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
        else:
            theirs.save_pretrained(tmp_path)
            loaded = surgery.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert max_diff(loaded.eval()(x), want) <= TOL


def test_parameters_stay_the_same_objects_during_and_after_forward():
    _, ours = pair(Attn())
    before = dict(ours.named_parameters())
    flags = {n: p.requires_grad for n, p in before.items()}
    seen = {}
    layer = ours.base_model.model.mha
    handle = layer.base_layer.register_forward_pre_hook(lambda *_: seen.update(ours.named_parameters()))
    ours.train()
    ours(inputs()).sum().backward()
    handle.remove()
    assert set(seen) == set(before)   # the names stay; the adapted weights sit in their place meanwhile
    assert seen[f"{PATH}.base_layer.in_proj_weight"] is not before[f"{PATH}.base_layer.in_proj_weight"]
    after = dict(ours.named_parameters())
    assert all(after[n] is p for n, p in before.items()) and flags == {n: p.requires_grad for n, p in after.items()}
    assert layer.in_proj_weight.grad is None and layer.out_proj.weight.grad is None


def test_safe_merge_refuses_non_finite_weights_and_changes_nothing():
    _, ours = pair(Attn())
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with torch.no_grad():
        ours.base_model.model.mha.base_layer.out_proj.lora_B["default"].weight[0, 0] = float("inf")
    with pytest.raises(surgery.SurgeryError, match="NaN/inf"):
        ours.merge_adapter(safe_merge=True)
    assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items() if "lora_B" not in k)


def test_mixed_adapter_batches_are_refused_as_peft():
    _, ours = pair(Attn(), (("a", {}), ("b", {})))
    with pytest.raises(TypeError, match="lora.MultiheadAttention does not support mixed adapter batches"):
        ours(inputs(), adapter_names=["a", "b"])


def test_half_precision_outputs_equal_peft():
    base = Attn().to(torch.bfloat16)
    theirs, ours = pair(base, lora_bias=True)
    x = inputs(dtype=torch.bfloat16)
    got = ours(x)
    assert got.dtype == torch.bfloat16
    assert ours.base_model.model.mha.lora_A["default"].weight.dtype == torch.float32   # autocast_adapter_dtype
    assert max_diff(got, theirs(x)) == 0


@pytest.mark.parametrize("mha_kwargs, config, match", [
    ({"kdim": 4, "vdim": 6}, {}, "Only same embed for query/key/value is supported as of now for MultiheadAttention"),
    ({}, {"use_dora": True}, r"MultiheadAttention does not support DoRA \(yet\), please set use_dora to False"),
    ({"bias": False}, {"lora_bias": True}, "lora_bias=True on 'mha', a MultiheadAttention without biases"),
])
def test_what_cannot_be_wrapped_is_refused_at_plan_time(mha_kwargs, config, match):
    base = Attn(**mha_kwargs)
    with pytest.raises(surgery.SurgeryError, match=match):
        surgery.get_peft_model(base, surgery.LoraConfig(target_modules=["mha"], **config))
    assert type(base.mha.out_proj) is not OutProj   # nothing was changed


def test_the_plan_counts_both_halves():
    base = Attn()
    theirs, ours = pair(base, lora_bias=True, r=3)
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    plan = surgery.plan(copy.deepcopy(base), surgery.LoraConfig(target_modules=["mha"], r=3, lora_bias=True))
    assert sum(rw.added_params for rw in plan.rewrites) == theirs.get_nb_trainable_parameters()[0]


class MaskedAttn(nn.Module):
    """Extra projection biases, a padding mask and per-head attention weights: arguments reach the base forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mha = nn.MultiheadAttention(E, HEADS, batch_first=True, add_bias_kv=True, add_zero_attn=True)

    def forward(self, x):
        mask = torch.zeros(x.shape[:2], dtype=torch.bool)
        mask[0, -2:] = True
        return self.mha(x, x, x, key_padding_mask=mask, average_attn_weights=False)


def test_forward_arguments_and_attention_weights_equal_peft():
    base = MaskedAttn()
    theirs, ours = pair(base)
    (want, want_weights), (got, got_weights) = theirs(inputs()), ours(inputs())
    assert got_weights.shape == (2, HEADS, 5, 7)   # per head; the bias_kv and zero-attention columns
    assert max_diff(got, want) <= TOL and max_diff(got_weights, want_weights) <= TOL
    assert max_diff(got, base(inputs())[0]) > 1e-3
