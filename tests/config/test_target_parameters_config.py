"""LoraConfig.target_parameters fuzzed against peft 0.21.2 (hypothesis): for drawn values of the field and of
the options it interacts with, on a tiny gpt-oss (experts (E, in, out), no default targets) and a tiny Mixtral
(experts (E, out, in), PEFT's transformers-v5 config conversion), surgery accepts exactly what peft accepts, with
the same trainable parameters and the same targeted parameters; what it refuses it refuses with a SurgeryError
(a TypeError too for a string, as peft), and a valid config round-trips through its dict.

Not drawn: '' as a name, which surgery refuses (it names no parameter) and peft ignores; and use_dora with
lora_bias, which peft refuses for every target and surgery's config does not yet (not a target_parameters matter)."""
from __future__ import annotations

import copy
import os
import warnings

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import surgery
from surgery.errors import SurgeryError
from tests.methods.lora.test_target_parameters import _base

peft = pytest.importorskip("peft")

EXAMPLES = 400 if os.environ.get("SURGERY_LONG_TESTS") == "1" else 40
NAMES = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj", "experts.down_proj", "down_proj",
         "0.mlp.experts.gate_up_proj", "1.mlp.experts.down_proj", "mlp.gate.weight", "router.weight",
         "experts.gate_up_proj_bias", "input_layernorm.weight", "q_proj.weight", "mlp.experts.nothing",
         "lm_head.weight", "embed_tokens.weight", "experts", "gate_up_proj"]
FIELDS = {
    "target_parameters": st.one_of(st.none(), st.lists(st.sampled_from(NAMES), max_size=3),
                                   st.sampled_from(["mlp.experts.down_proj", "down_proj"])),
    "target_modules": st.sampled_from([[], ["q_proj"], None, ["v_proj", "o_proj"], ["w1", "w3"]]),
    "lora_dropout": st.sampled_from([0.0, 0.1]),
    "use_dora": st.booleans(),
    "lora_bias": st.booleans(),
    "r": st.integers(1, 4),
    "init_lora_weights": st.sampled_from([True, False, "gaussian"]),
}
MODELS = {name: _base(name) for name in ("gpt_oss", "mixtral")}


def _outcome(lib, model, data):
    """(trainable params, targeted parameter names, targeted module names), or the exception raised."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapped = lib.get_peft_model(copy.deepcopy(model), lib.LoraConfig(**data))
    except Exception as exc:   # noqa: BLE001 - any refusal is an outcome to compare
        return exc
    tuner = wrapped.base_model
    return (wrapped.get_nb_trainable_parameters()[0], list(tuner.targeted_parameter_names),
            sorted(tuner.targeted_module_names))


def test_fuzzed_target_parameters_accept_and_refuse_exactly_as_peft():
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(sorted(MODELS)), st.fixed_dictionaries({}, optional=FIELDS))
    def check(name, data):
        assume(not (data.get("use_dora") and data.get("lora_bias")))
        theirs, ours = _outcome(peft, MODELS[name], data), _outcome(surgery, MODELS[name], data)
        if isinstance(theirs, Exception):
            assert isinstance(ours, SurgeryError), (name, data, theirs, ours)
            if isinstance(theirs, TypeError):
                assert isinstance(ours, TypeError), (name, data, ours)
            return
        assert not isinstance(ours, Exception), (name, data, ours)
        assert ours == theirs, (name, data)
        config = surgery.LoraConfig(**data)
        assert surgery.LoraConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()

    check()


def test_runtime_config_is_peft_s_and_never_saved(tmp_path):
    """LoraRuntimeConfig: accepted as the object or a dict, checked, kept off adapter_config.json (PEFT too)."""
    import peft as _peft

    import surgery as _surgery

    ours = _surgery.LoraConfig(runtime_config=_surgery.LoraRuntimeConfig(ephemeral_gpu_offload=True))
    theirs = _peft.LoraConfig(runtime_config=_peft.LoraRuntimeConfig(ephemeral_gpu_offload=True))
    assert ours.runtime_config.ephemeral_gpu_offload is theirs.runtime_config.ephemeral_gpu_offload is True
    assert "runtime_config" not in ours.to_dict() and "runtime_config" not in theirs.to_dict()
    assert _surgery.LoraConfig(runtime_config={"ephemeral_gpu_offload": True}).runtime_config == \
        _surgery.LoraRuntimeConfig(True)
    assert _surgery.LoraConfig().runtime_config == _surgery.LoraRuntimeConfig()
    for bad in ({"gpu": 1}, {"ephemeral_gpu_offload": "yes"}, 3):
        with pytest.raises(_surgery.errors.ConfigError, match="runtime_config"):
            _surgery.LoraConfig(runtime_config=bad)
    ours.save_pretrained(tmp_path)
    assert _surgery.PeftConfig.from_pretrained(tmp_path).runtime_config == _surgery.LoraRuntimeConfig()
