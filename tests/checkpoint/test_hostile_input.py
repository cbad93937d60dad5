"""Hostile input: every bad config, file and name gets the library's own error, and the model stays as it was.

Hypothesis example counts are fixed (FUZZ_EXAMPLES; SURGERY_LONG_TESTS=1 for 20x) so docs/reliability.md
can state them.
"""
import json
import os
import struct

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import surgery
from tests.support import tiny_models
from surgery.methods.lora.config import LoraConfig
from surgery.config.loading import config_from_dict, load_config
from surgery.errors import CheckpointError, ConfigError, PlanError, SurgeryError, TargetNotFoundError

FUZZ_EXAMPLES = 2000 if os.environ.get("SURGERY_LONG_TESTS") == "1" else 100
FIELDS = LoraConfig.field_names()
json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                           | st.text(max_size=12), lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=10)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=12), json_values, max_size=8))
def test_config_loader_fuzz_raises_only_library_errors(data):
    data = dict(data, peft_type="LORA")
    try:
        config = config_from_dict(data)
    except SurgeryError:
        return
    assert isinstance(config, LoraConfig)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=200))
def test_yaml_text_fuzz_raises_only_library_errors(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("y") / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(str(path))
    except SurgeryError:
        pass


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(targets=st.one_of(st.text(max_size=12), st.lists(st.text(max_size=10), min_size=1, max_size=4)),
       layers=st.one_of(st.none(), st.integers(-3, 5), st.lists(st.integers(-3, 5), max_size=3)))
def test_planner_fuzz_raises_only_library_errors_and_never_mutates(targets, layers):
    model = _LLAMA
    try:
        surgery.plan(model, {"peft_type": "LORA", "target_modules": targets, "layers_to_transform": layers})
    except SurgeryError:
        pass
    assert not any(getattr(m, "_surgery_adapter_layer", False) for m in model.modules())


_LLAMA = tiny_models.tiny_llama()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _untouched(model, before):
    after = model.state_dict()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


BAD_CONFIGS = [
    ({"rr": 8}, ConfigError, r"unknown key 'rr'.*did you mean 'r'"),
    ({"r": "8"}, ConfigError, r"r = '8' has type str; expected int"),
    ({"r": 0}, ConfigError, r"r = 0 is out of range"),
    ({"r": -4}, ConfigError, r"r = -4 is out of range"),
    ({"lora_dropout": -0.1}, ConfigError, r"lora_dropout = -0.1 is out of range"),
    ({"lora_alpha": "16"}, ConfigError, r"lora_alpha = '16' has type str"),
    ({"bias": "some"}, ConfigError, r"bias = 'some'"),
    ({"target_modules": ["q_prj"]}, TargetNotFoundError, r"'q_prj'.*did you mean 'q_proj'"),
    ({"target_modules": "(q_proj"}, ConfigError, r"not a valid regular expression"),
    ({"target_modules": ["q_proj"], "layers_to_transform": [7]}, ConfigError, r"layer\(s\) \[7\] do not exist.*0\.\.1"),
    ({"target_modules": ["embed_tokens"], "lora_bias": True}, PlanError, r"lora_bias=True on 'model.embed_tokens'"),
    ({"target_modules": ["self_attn"]}, PlanError, r"LlamaAttention, which LoRA cannot wrap"),
    ({"peft_type": "NOPE", "target_modules": ["q_proj"]}, ConfigError, r"peft_type = 'NOPE' does not exist"),
    ({"peft_type": "POLY", "target_modules": ["q_proj"]}, ConfigError, r"does not implement yet"),
    ({"target_modules": ["q_proj"], "use_qalora": True}, ConfigError, r"use_qalora.*not supported"),
]


@pytest.mark.parametrize("overrides, error, message", BAD_CONFIGS, ids=[str(c[0]) for c in BAD_CONFIGS])
def test_bad_config_is_refused_and_model_untouched(overrides, error, message):
    model = tiny_models.tiny_llama()
    before = _state(model)
    data = {"peft_type": "LORA", **overrides}
    with pytest.raises(error, match=message):
        surgery.get_peft_model(model, config_from_dict(data))
    assert _untouched(model, before)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump(["r", 8]))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(str(path))
    path.write_text("!!python/object/apply:os.system ['touch pwned']")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))


def _adapter(tmp_path):
    model = surgery.get_peft_model(tiny_models.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"], r=4))
    model.save_pretrained(tmp_path / "a")
    return tmp_path / "a"


def test_safetensors_header_claiming_absurd_sizes(tmp_path):
    directory = _adapter(tmp_path)
    header = json.dumps({"x": {"dtype": "F32", "shape": [1 << 40, 1 << 20], "data_offsets": [0, 1 << 62]}})
    (directory / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode())
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        surgery.PeftModel.from_pretrained(tiny_models.tiny_llama(), str(directory))
    (directory / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        surgery.PeftModel.from_pretrained(tiny_models.tiny_llama(), str(directory))


def test_wrong_dtype_tensors_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    directory = _adapter(tmp_path)
    tensors = {k: v.to(torch.int64) for k, v in load_file(directory / "adapter_model.safetensors").items()}
    save_file(tensors, directory / "adapter_model.safetensors")
    model = tiny_models.tiny_llama()
    before = _state(model)
    with pytest.raises(CheckpointError, match="int64"):
        surgery.PeftModel.from_pretrained(model, str(directory))
    assert _untouched(model, before)


def test_missing_files_and_a_file_for_a_directory(tmp_path):
    directory = _adapter(tmp_path)
    os.remove(directory / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match="no adapter_model.safetensors"):
        surgery.PeftModel.from_pretrained(tiny_models.tiny_llama(), str(directory))
    os.remove(directory / "adapter_config.json")
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        surgery.PeftModel.from_pretrained(tiny_models.tiny_llama(), str(directory))
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        surgery.PeftModel.from_pretrained(tiny_models.tiny_llama(), str(tmp_path / "file"))


@pytest.mark.parametrize("name", ["../x", "/abs/path", "", "a/b", "..", "a.b", "base_layer", "training"])
def test_unsafe_adapter_names_are_refused_everywhere(tmp_path, name):
    model = tiny_models.tiny_llama()
    before = _state(model)
    with pytest.raises(SurgeryError, match="adapter_name"):
        surgery.get_peft_model(model, surgery.LoraConfig(target_modules=["q_proj"]), adapter_name=name)
    assert _untouched(model, before)
    directory = _adapter(tmp_path)
    with pytest.raises(SurgeryError, match="adapter_name"):
        surgery.PeftModel.from_pretrained(tiny_models.tiny_llama(), str(directory), adapter_name=name)


def test_selected_adapters_cannot_write_outside(tmp_path):
    model = surgery.get_peft_model(tiny_models.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(SurgeryError):
        model.save_pretrained(tmp_path / "out", selected_adapters=["../../escape"])
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out").exists()


def test_adapter_for_another_architecture_is_refused(tmp_path):
    directory = _adapter(tmp_path)
    gpt2 = tiny_models.tiny_gpt2()
    before = _state(gpt2)
    with pytest.raises(SurgeryError, match="q_proj"):
        surgery.PeftModel.from_pretrained(gpt2, str(directory))
    assert _untouched(gpt2, before)
