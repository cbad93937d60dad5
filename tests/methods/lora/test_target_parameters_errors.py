"""LoraConfig.target_parameters: bad values and options refused before anything changes, in PEFT's words first
(each case is checked against peft 0.21.2 raising the same leading sentence) then naming the field, the value and
what would be valid; PEFT's transformers-v5 MoE config conversion; and the refusals PEFT keeps (weighted adapters,
mixed adapter batches, injection from a state dict)."""
from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
from torch import nn

import surgery
from surgery.errors import ConfigTypeError, PlanError, TargetNotFoundError
from tests.methods.lora.test_target_parameters import MOE, _base, _batch, _pair
from tests.support import tiny_models as tm

peft = pytest.importorskip("peft")


def _peft_error(model, **kwargs) -> str:
    with warnings.catch_warnings(), pytest.raises(Exception) as info:
        warnings.simplefilter("ignore")
        peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(**kwargs))
    return str(info.value)


def _unchanged(model, before: dict) -> None:
    assert not any(getattr(type(m), "_surgery_adapter_layer", False) for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_string_is_refused_as_peft_does():
    with pytest.raises(TypeError, match="must be a list of strings or None"):
        peft.LoraConfig(target_parameters="mlp.experts.down_proj")
    with pytest.raises(ConfigTypeError) as info:
        surgery.LoraConfig(target_parameters="mlp.experts.down_proj")
    msg = str(info.value)
    assert msg.startswith("`target_parameters` must be a list of strings or None.")
    assert "LoraConfig.target_parameters = 'mlp.experts.down_proj'" in msg and "list of names" in msg


@pytest.mark.parametrize("value, words", [([3], "expected a list of 'module.param' names"),
                                          ({"a": 1}, "expected a list"), ([""], "names no parameter")])
def test_other_malformed_values_are_refused_naming_the_field(value, words):
    with pytest.raises(surgery.errors.ConfigError) as info:
        surgery.LoraConfig(target_parameters=value)
    assert "target_parameters" in str(info.value) and words in str(info.value)


# -- refused when planned: nothing changes ---------------------------------------------------------------------
CASES = {   # name -> (LoraConfig keywords on the tiny Mixtral, surgery's words after PEFT's)
    "one_dimensional": (dict(target_modules=[], target_parameters=["input_layernorm.weight"]),
                        ["'model.layers.0.input_layernorm.weight' of shape (32,)", "2-D (out x in) or 3-D"]),
    "dropout": (dict(target_modules=[], target_parameters=MOE, lora_dropout=0.1),
                ["LoraConfig.lora_dropout = 0.1", "set lora_dropout=0.0"]),
    "dora": (dict(target_modules=[], target_parameters=MOE, use_dora=True), ["LoraConfig.use_dora = True"]),
    "lora_bias": (dict(target_modules=[], target_parameters=MOE, lora_bias=True), ["LoraConfig.lora_bias = True"]),
    "fan_in_fan_out": (dict(target_modules=[], target_parameters=MOE, fan_in_fan_out=True),
                       ["LoraConfig.fan_in_fan_out = True"]),
    "module_and_its_parameter": (dict(target_modules=["q_proj"], target_parameters=["q_proj.weight"]),
                                 ["selects 'model.layers.0.self_attn.q_proj.weight'", "target_modules adapts"]),
    "nothing_matched": (dict(target_modules=[], target_parameters=["mlp.experts.gate_up"]),
                        ["target_parameters = ['mlp.experts.gate_up'] matched no parameter",
                         "did you mean 'mlp.experts.gate_up_proj'", "mlp.experts.down_proj (4x32x24)"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_refused_in_peft_words_then_field_value_and_what_is_valid(name):
    kwargs, words = CASES[name]
    base = _base("mixtral")
    before = copy.deepcopy(base.state_dict())
    lead = _peft_error(base, **kwargs)
    with pytest.raises((PlanError, TargetNotFoundError)) as info:
        surgery.get_peft_model(base, surgery.LoraConfig(**kwargs))
    msg = str(info.value)
    assert msg.startswith(lead), (msg, lead)
    for word in words:
        assert word in msg, (word, msg)
    _unchanged(base, before)


def test_an_init_that_reads_a_base_weight_is_refused_where_peft_fails():
    base = _base("mixtral")
    assert "has no attribute 'weight'" in _peft_error(base, target_modules=[], target_parameters=MOE,
                                                       init_lora_weights="pissa")
    with pytest.raises(PlanError, match=r"init_lora_weights = 'pissa' .*valid for parameter targets: True, "
                                        r"'gaussian', False"):
        surgery.get_peft_model(base, surgery.LoraConfig(target_modules=[], target_parameters=MOE,
                                                        init_lora_weights="pissa"))


def test_a_parameter_of_the_top_level_module_is_refused():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.param = nn.Parameter(torch.zeros(10, 10))

    lead = _peft_error(Holder(), target_parameters=["param"])
    with pytest.raises(PlanError) as info:
        surgery.get_peft_model(Holder(), surgery.LoraConfig(target_parameters=["param"]))
    assert str(info.value).startswith(lead) and "name a parameter of a submodule" in str(info.value)


def test_a_second_adapter_must_target_the_same_parameters():
    _, theirs, ours = _pair("qwen3_moe", target_modules=[], target_parameters=MOE)
    other = dict(target_modules=[], target_parameters=["mlp.experts.down_proj"])
    with pytest.raises(ValueError) as peft_info:
        theirs.add_adapter("other", peft.LoraConfig(**other))
    with pytest.raises(surgery.errors.ConfigError) as info:
        ours.add_adapter("other", surgery.LoraConfig(**other))
    assert str(info.value).startswith(str(peft_info.value))
    assert "other" not in ours.peft_config and all(set(m.lora_A) == {"default"} for m in ours.modules()
                                                   if type(m).__name__ == "ParamWrapper")


def test_names_that_match_nothing_beside_others_warn():
    base = _base("qwen3_moe")
    with pytest.warns(RuntimeWarning, match=r"'mlp.experts.up_proj'.*the other names matched 4 parameter"):
        surgery.get_peft_model(base, surgery.LoraConfig(target_modules=[],
                                                        target_parameters=MOE + ["mlp.experts.up_proj"]))


def test_target_modules_that_match_nothing_while_parameters_do_warn_in_peft_words():
    base = _base("gpt_oss")
    with pytest.warns(RuntimeWarning, match=re.escape("target_modules={'nothing'} were set but no module was "
                                                      "matched.")):
        surgery.get_peft_model(base, surgery.LoraConfig(target_modules=["nothing"], target_parameters=MOE))


# -- PEFT's transformers-v5 MoE config conversion ----------------------------------------------------------------
@pytest.mark.parametrize("name, kwargs", [
    ("qwen3_moe", dict(target_modules=["gate_proj", "up_proj", "down_proj"])),
    ("qwen3_moe", dict(target_modules="all-linear")),
    ("qwen3_moe", dict(target_modules=r".*\.(q_proj|gate_proj|up_proj)")),
    ("mixtral", dict(target_modules=["w1", "w2", "w3", "q_proj"])),
    ("mixtral", dict(target_parameters=MOE)),   # target_modules None: no default targets on these models
])
def test_v4_moe_names_are_converted_as_peft_converts_them(name, kwargs):
    _, theirs, ours = _pair(name, **kwargs)
    want, got = theirs.peft_config["default"], ours.peft_config["default"]
    assert set(got.target_modules) == set(want.target_modules)
    assert set(got.target_parameters) == set(want.target_parameters)
    assert (got.rank_pattern, got.alpha_pattern) == (want.rank_pattern, want.alpha_pattern)
    assert ours.base_model.targeted_parameter_names == theirs.base_model.targeted_parameter_names
    assert sorted(ours.base_model.targeted_module_names) == sorted(theirs.base_model.targeted_module_names)
    x = _batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, atol=1e-5, rtol=1e-5)
    if set(want.target_parameters) - set(kwargs.get("target_parameters", [])):
        assert any("transformers 5 fused" in w for w in ours.plan().warnings)


def test_half_of_a_fused_pair_is_refused_as_peft_refuses_it():
    base = _base("qwen3_moe")
    lead = _peft_error(base, target_modules=["gate_proj"])
    with pytest.raises(surgery.errors.ConfigError) as info:
        surgery.get_peft_model(base, surgery.LoraConfig(target_modules=["gate_proj"]))
    assert str(info.value).startswith(lead) and "name both halves" in str(info.value)


# -- what PEFT refuses for parameter targets, refused alike ---------------------------------------------------------
def test_add_weighted_adapter_is_refused_as_peft_refuses_it():
    _, theirs, ours = _pair("qwen3_moe", target_modules=[], target_parameters=MOE)
    with pytest.raises(ValueError) as peft_info:
        theirs.add_weighted_adapter(["default"], [1.0], "mix", combination_type="linear")
    with pytest.raises(ValueError) as info:
        ours.add_weighted_adapter(["default"], [1.0], "mix", combination_type="linear")
    assert str(info.value) == str(peft_info.value) == ("add_weighted_adapter does not support targeting "
                                                       "nn.Parameter (problematic adapter 'default')")


def test_mixed_adapter_batches_are_refused_with_peft_words():
    _, _, ours = _pair("qwen3_moe", target_modules=[], target_parameters=MOE)
    ours.add_adapter("other", surgery.LoraConfig(target_modules=[], target_parameters=MOE))
    ours.eval()   # one adapter per sample is an inference feature
    with pytest.raises(ValueError, match="lora.ParamWrapper does not support mixed adapter batches yet."):
        ours(_batch(), adapter_names=["default", "other"])
    ours(_batch())   # the refusal left no per-sample state behind


def test_injecting_from_a_state_dict_is_refused_as_peft_refuses_it():
    model = tm.tiny_llama()
    config = dict(target_modules=[], target_parameters=["gate_proj.weight"])
    state = {"model.layers.0.mlp.gate_proj.lora_A.weight": torch.zeros(8, 64)}
    with pytest.raises(ValueError) as peft_info:
        peft.inject_adapter_in_model(peft.LoraConfig(**config), copy.deepcopy(model), state_dict=state)
    with pytest.raises(PlanError) as info:
        surgery.inject_adapter_in_model(surgery.LoraConfig(**config), model, state_dict=state)
    assert str(info.value) == str(peft_info.value)
