"""PEFT's public API beyond get_peft_model, each checked against real peft on the same tiny model:
layer/model status, base-model state dicts, inject_adapter_in_model, tuners built directly, the tuner's
adapter management, PeftConfig files, error classes and the PEFT_TYPE mappings."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import surgery
from tests.support import tiny_models as tm

peft = pytest.importorskip("peft")

CONFIG = dict(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8, modules_to_save=["lm_head"])


def both(**kwargs):
    """The same LoRA model built by peft and by surgery (same base weights, adapters copied across)."""
    theirs = peft.get_peft_model(tm.tiny_llama(), peft.LoraConfig(**{**CONFIG, **kwargs}))
    ours = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(**{**CONFIG, **kwargs}))
    surgery.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    return theirs, ours


def _plain(status):
    return {k: v for k, v in dataclasses.asdict(status).items()}


def test_layer_status_equals_peft_field_for_field():
    theirs, ours = both()
    theirs.add_adapter("other", peft.LoraConfig(target_modules=["q_proj"], r=2))
    ours.add_adapter("other", surgery.LoraConfig(target_modules=["q_proj"], r=2))
    mine, want = surgery.get_layer_status(ours), peft.get_layer_status(theirs)
    assert [_plain(s) for s in mine] == [_plain(s) for s in want]
    assert mine[0].module_type == "lora.Linear"


def test_model_status_equals_peft_and_reports_irregular_states():
    theirs, ours = both()
    for model in (theirs, ours):
        model.base_model.model.model.layers[0].self_attn.q_proj.enable_adapters(False)
    mine, want = ours.get_model_status(), theirs.get_model_status()
    assert _plain(mine) == _plain(want)
    assert mine.enabled == "irregular" and mine.adapter_model_type == "LoraModel"


def test_status_of_a_model_without_adapters_is_an_error():
    with pytest.raises(surgery.SurgeryError, match="no adapter layers"):
        surgery.get_layer_status(tm.tiny_llama())


def test_base_model_state_dict_has_the_original_keys_as_peft():
    theirs, ours = both()
    mine, want = surgery.get_base_model_state_dict(ours), peft.get_base_model_state_dict(theirs)
    assert list(mine) == list(want) == list(tm.tiny_llama().state_dict())
    assert all(torch.equal(mine[k], want[k]) for k in want)


def test_set_base_model_state_dict_loads_original_keys_and_reports_mismatches():
    _, ours = both()
    fresh = tm.tiny_llama(seed=7).state_dict()
    result = surgery.set_base_model_state_dict(ours, fresh)
    assert result.missing_keys == [] and result.unexpected_keys == []
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.equal(layer.base_layer.weight, fresh["model.layers.0.self_attn.q_proj.weight"])
    with pytest.raises(RuntimeError, match="Unexpected key"):
        surgery.set_base_model_state_dict(ours, {**fresh, "nope.weight": torch.zeros(1)})
    partial = surgery.set_base_model_state_dict(ours, {"nope.weight": torch.zeros(1)}, strict=False)
    assert partial.unexpected_keys == ["nope.weight"] and "lm_head.weight" in partial.missing_keys


def test_inject_adapter_in_model_equals_peft_and_returns_the_model():
    base_a, base_b = tm.tiny_llama(), tm.tiny_llama()
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(target_modules=["q_proj"], r=4), base_a)
    ours = surgery.inject_adapter_in_model(surgery.LoraConfig(target_modules=["q_proj"], r=4), base_b)
    assert ours is base_b
    assert sorted(n for n, p in ours.named_parameters() if p.requires_grad) == \
        sorted(n for n, p in theirs.named_parameters() if p.requires_grad)
    assert surgery.get_peft_model_state_dict(ours).keys() == peft.get_peft_model_state_dict(theirs).keys()


def test_inject_adapter_from_a_state_dict_targets_the_modules_it_names():
    _, source = both()
    state = surgery.get_peft_model_state_dict(source)
    model = surgery.inject_adapter_in_model(surgery.LoraConfig(r=4, target_modules=["k_proj"]), tm.tiny_llama(),
                                            state_dict={k: v for k, v in state.items() if "lora_" in k})
    targeted = {n.rpartition(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert targeted == {k.removeprefix("base_model.model.").partition(".lora_A")[0]
                        for k in state if ".lora_A." in k}


def test_inject_refuses_methods_whose_state_lives_on_the_peft_model():
    for config in (surgery.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2),
                   surgery.VeraConfig(target_modules=["q_proj"])):
        with pytest.raises(surgery.SurgeryError, match="get_peft_model"):
            surgery.inject_adapter_in_model(config, tm.tiny_llama())


def test_a_tuner_built_directly_injects_as_peft_lora_model():
    ours = surgery.LoraModel(tm.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"]), "first")
    theirs = peft.LoraModel(tm.tiny_llama(), peft.LoraConfig(target_modules=["q_proj"]), "first")
    assert ours.active_adapters == theirs.active_adapters == ["first"]
    assert ours.targeted_module_names == theirs.targeted_module_names
    assert ours.prefix == theirs.prefix == "lora_"


def test_tuner_adapter_management_matches_peft():
    theirs, ours = both()
    for model, lib in ((theirs, peft), (ours, surgery)):
        model.add_adapter("other", lib.LoraConfig(target_modules=["k_proj"], r=2))
        model.base_model.set_adapter("other")
    assert ours.active_adapters == theirs.active_adapters == ["other"]
    assert ours.targeted_module_names == theirs.targeted_module_names
    trainable = lambda m: sorted(n for n, p in m.named_parameters() if p.requires_grad)   # noqa: E731
    assert trainable(ours) == trainable(theirs)
    for model in (ours, theirs):
        model.set_requires_grad("default", True)
    assert trainable(ours) == trainable(theirs)
    for model in (ours, theirs):
        model.base_model.delete_adapter("other")
        model.base_model.delete_adapter("default")
    assert ours.active_adapters == theirs.active_adapters == []


def test_set_requires_grad_is_refused_for_prompt_learning_as_in_peft():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.PromptTuningConfig(task_type="CAUSAL_LM",
                                                                               num_virtual_tokens=2))
    with pytest.raises(TypeError, match="not supported for prompt learning"):
        model.set_requires_grad("default")


def test_peft_config_files_round_trip_both_ways(tmp_path):
    ours = surgery.LoraConfig(target_modules=["q_proj"], r=4)
    ours.save_pretrained(tmp_path / "ours")
    assert isinstance(peft.PeftConfig.from_pretrained(tmp_path / "ours"), peft.LoraConfig)
    peft.LoraConfig(target_modules=["q_proj"], r=4).save_pretrained(tmp_path / "theirs")
    loaded = surgery.PeftConfig.from_pretrained(str(tmp_path / "theirs"))
    assert isinstance(loaded, surgery.LoraConfig) and loaded.r == 4 and loaded.peft_version == "0.21.2"
    data = surgery.PeftConfig.from_json_file(str(tmp_path / "theirs" / "adapter_config.json"))
    assert data["peft_type"] == "LORA"


def test_a_file_that_is_not_an_adapter_config_is_a_type_error(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"foo": "bar"}))
    with pytest.raises(TypeError, match="missing required keys: {'peft_type'}"):
        surgery.LoraConfig.from_pretrained(str(tmp_path))


def test_error_and_warning_classes_are_peft_names():
    assert issubclass(surgery.SurgeryError, surgery.PeftError)
    assert issubclass(surgery.errors.TargetNotFoundError, surgery.NoMatchingPeftModuleError)
    assert issubclass(surgery.NoMatchingPeftModuleError, ValueError)
    with pytest.raises(surgery.NoMatchingPeftModuleError):
        surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_modules=["nothing"]))
    with pytest.raises(surgery.NoMatchingPeftModuleError):   # PEFT accepts [] in the config, not in a plan
        surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_modules=[]))


def test_peft_type_mappings_cover_every_method_as_peft_names_them():
    for peft_type, config_cls in surgery.PEFT_TYPE_TO_CONFIG_MAPPING.items():
        assert config_cls.__name__ == peft.PEFT_TYPE_TO_CONFIG_MAPPING[peft_type].__name__
    for peft_type, tuner_cls in surgery.PEFT_TYPE_TO_TUNER_MAPPING.items():
        assert tuner_cls.prefix == peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING[peft_type]
    assert surgery.PEFT_TYPE_TO_CONFIG_MAPPING["LORA"] is surgery.LoraConfig
    assert "PROMPT_TUNING" not in surgery.PEFT_TYPE_TO_TUNER_MAPPING   # no tuner for prompt learning, as PEFT


def test_from_pretrained_keeps_the_config_passed_in_and_load_adapter_reports_keys(tmp_path):
    _, ours = both()
    ours.save_pretrained(tmp_path)
    config = surgery.LoraConfig(**CONFIG)
    loaded = surgery.PeftModel.from_pretrained(tm.tiny_llama(), str(tmp_path), config=config)
    assert loaded.peft_config["default"] is config and config.inference_mode
    result = loaded.load_adapter(str(tmp_path), "again")
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_inject_with_low_cpu_mem_usage_leaves_the_adapter_on_meta_as_peft():
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(target_modules=["q_proj"]), tm.tiny_llama(),
                                          low_cpu_mem_usage=True)
    ours = surgery.inject_adapter_in_model(surgery.LoraConfig(target_modules=["q_proj"]), tm.tiny_llama(),
                                           low_cpu_mem_usage=True)
    meta = lambda m: sorted(n for n, p in m.named_parameters() if p.device.type == "meta")   # noqa: E731
    assert meta(ours) == meta(theirs) and meta(ours)
    with pytest.raises(ValueError, match="shared state.*get_peft_model"):
        surgery.inject_adapter_in_model(surgery.VeraConfig(target_modules=["q_proj"]), tm.tiny_llama())


def test_a_checkpoint_fills_an_adapter_injected_on_meta():
    _, source = both()
    state = {k: v for k, v in surgery.get_peft_model_state_dict(source).items() if "lora_" in k}
    model = surgery.inject_adapter_in_model(surgery.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
                                            tm.tiny_llama(), low_cpu_mem_usage=True)
    surgery.set_peft_model_state_dict(model, {k.removeprefix("base_model.model."): v for k, v in state.items()})
    assert all(p.device.type == "cpu" for p in model.parameters())
    layer = model.model.layers[0].self_attn.q_proj
    assert torch.equal(layer.lora_A["default"].weight, source.base_model.model.model.layers[0].self_attn.q_proj
                       .lora_A["default"].weight)


def test_every_peft_public_name_is_present_or_has_a_reason_and_the_doc_is_current():
    from benchmarks.conformance.api_coverage import DOC, render, rows

    assert [name for name, _, why in rows() if why.startswith("MISSING")] == []
    assert DOC.read_text(encoding="utf-8") == render(), "run: python -m benchmarks.conformance.api_coverage --write"
