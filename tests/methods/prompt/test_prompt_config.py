"""Prompt-learning configs: PEFT's fields and defaults, get_peft_config of the API reference's examples
(exactly as written), the printed trainable-parameter figures, architecture fields filled from the model."""
from __future__ import annotations

import copy
import dataclasses
import json
import warnings

import pytest
import torch

import surgery
from tests.support import tiny_models as tm
from tests.support.helpers import printed_line
from surgery.archs import build_meta_model, resolve_config

peft = pytest.importorskip("peft")

# The API reference's two prefix-tuning examples, exactly as written there.
BERT_EXAMPLE = {
    "peft_type": "PREFIX_TUNING", "task_type": "SEQ_CLS", "inference_mode": False, "num_virtual_tokens": 20,
    "token_dim": 768, "num_transformer_submodules": 1, "num_attention_heads": 12, "num_layers": 12,
    "encoder_hidden_size": 768, "prefix_projection": False, "postprocess_past_key_value_function": None,
}
GPT2_EXAMPLE = {
    "peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "inference_mode": False, "num_virtual_tokens": 20,
    "token_dim": 1280, "num_transformer_submodules": 1, "num_attention_heads": 20, "num_layers": 36,
    "encoder_hidden_size": 1280, "prefix_projection": False, "postprocess_past_key_value_function": None,
}
# What today's PEFT prints for the same models built from their configs. The reference printed
# 108,680,450 for BERT: older PEFT counted the classifier once; PEFT 0.21 (and surgery) count the frozen
# original and its trainable modules_to_save copy (+1,538).
FIGURES = [
    ("bert-base-cased", BERT_EXAMPLE, "PeftModelForSequenceClassification",
     "trainable params: 370,178 || all params: 108,681,988 || trainable%: 0.3406"),
    ("gpt2-large", GPT2_EXAMPLE, "PeftModelForCausalLM",
     "trainable params: 1,843,200 || all params: 775,873,280 || trainable%: 0.2376"),
]
CLASSES = ["PromptTuningConfig", "PromptEncoderConfig", "PrefixTuningConfig"]


@pytest.mark.parametrize("name", CLASSES)
def test_fields_and_defaults_equal_peft(name):
    ours, theirs = getattr(surgery, name)(), getattr(peft, name)()
    our_fields = {f.name for f in dataclasses.fields(ours)}
    their_fields = {f.name for f in dataclasses.fields(theirs)}
    extra = {"postprocess_past_key_value_function"} if name == "PrefixTuningConfig" else set()
    assert our_fields - their_fields == extra and their_fields <= our_fields
    for key in their_fields - {"peft_version"}:
        assert getattr(ours, key) == getattr(theirs, key), key
    assert ours.is_prompt_learning and ours.peft_type == theirs.peft_type


def test_enums_have_peft_values():
    assert [m.value for m in surgery.PromptTuningInit] == [m.value for m in peft.PromptTuningInit]
    assert ([m.value for m in surgery.PromptEncoderReparameterizationType]
            == [m.value for m in peft.PromptEncoderReparameterizationType])
    assert surgery.PromptTuningInit("TEXT") == "TEXT"


@pytest.mark.parametrize("example", [BERT_EXAMPLE, GPT2_EXAMPLE])
def test_get_peft_config_takes_the_reference_examples_as_written(example):
    original = copy.deepcopy(example)
    config = surgery.get_peft_config(example)
    assert example == original   # not mutated
    assert type(config) is surgery.PrefixTuningConfig
    assert config.postprocess_past_key_value_function is None
    for key, value in example.items():
        if key not in ("peft_type", "task_type"):
            assert getattr(config, key) == value, key
    saved = config.to_dict()
    assert "postprocess_past_key_value_function" not in saved   # a run-time callable, never saved
    json.dumps(saved)
    assert surgery.PrefixTuningConfig.from_dict(saved) == config


@pytest.mark.parametrize("model_name,example,cls_name,line", FIGURES)
def test_reference_examples_print_todays_peft_figures(model_name, example, cls_name, line):
    model = build_meta_model(resolve_config(model_name), task=example["task_type"])
    peft_model = getattr(surgery, cls_name)(model, surgery.get_peft_config(example))
    assert printed_line(peft_model) == line
    assert peft_model.plan().totals_line() == line
    # today's PEFT on the same meta model (it refuses postprocess_past_key_value_function, so without it)
    theirs = {k: v for k, v in example.items() if k != "postprocess_past_key_value_function"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = getattr(peft, cls_name)(build_meta_model(resolve_config(model_name), task=theirs["task_type"]),
                                             peft.get_peft_config(theirs))
    assert printed_line(peft_model) == line


@pytest.mark.parametrize("builder,task,method", [
    (tm.tiny_llama, "CAUSAL_LM", "PrefixTuningConfig"), (tm.tiny_gpt2, "CAUSAL_LM", "PromptEncoderConfig"),
    (tm.tiny_t5, "SEQ_2_SEQ_LM", "PrefixTuningConfig"), (tm.tiny_t5, "SEQ_2_SEQ_LM", "PromptTuningConfig"),
    (tm.tiny_bert_seq_cls, "SEQ_CLS", "PromptTuningConfig")])
def test_architecture_fields_are_filled_as_peft_fills_them(builder, task, method):
    """Including grouped-query attention (Llama: the prefix is as wide as the keys) and 2 submodules for T5."""
    fields = dict(task_type=task, num_virtual_tokens=3)
    ours = surgery.get_peft_model(builder(), getattr(surgery, method)(**fields))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(builder(), getattr(peft, method)(**fields))
    keys = {"token_dim", "num_layers", "num_attention_heads", "num_transformer_submodules", "encoder_hidden_size",
            "modules_to_save"} & set(ours.peft_config["default"].field_names())
    for key in sorted(keys):
        expected = getattr(theirs.peft_config["default"], key, None)
        if key == "modules_to_save" and expected:
            expected = list(dict.fromkeys(expected))   # PEFT lists the classifier names twice
        assert getattr(ours.peft_config["default"], key, None) == expected, key
    assert printed_line(ours) == printed_line(theirs)


def test_the_users_config_is_not_mutated():
    config = surgery.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3)
    before = copy.deepcopy(config)
    surgery.get_peft_model(tm.tiny_bert_seq_cls(), config)
    assert config == before and config.token_dim is None and config.modules_to_save is None


def test_postprocess_past_key_value_function_is_applied():
    calls = []

    def scale(layers):
        calls.append(len(layers))
        return tuple(layer * 2 for layer in layers)

    ids = tm.token_batch()
    outputs = []
    for fn in (None, scale):
        torch.manual_seed(0)
        config = surgery.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3,
                                            postprocess_past_key_value_function=fn)
        model = surgery.get_peft_model(tm.tiny_gpt2(), config)
        assert model.peft_config["default"].postprocess_past_key_value_function is fn
        with torch.no_grad():
            outputs.append(model(input_ids=ids).logits)
    assert calls == [2]   # once per forward, with the 2 layers of the tiny GPT-2
    assert (outputs[0] - outputs[1]).abs().max() > 1e-4


def test_plan_records_the_injection():
    plan = surgery.plan(tm.tiny_bert_seq_cls(), surgery.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=5))
    assert [i.path for i in plan.injections] == ["prompt_encoder.default"]
    assert plan.injections[0].shape == (5, 2 * 2 * 32) and plan.injections[0].params == 5 * 128
    assert [m.path for m in plan.modules_to_save] == ["classifier"]
    assert "bert's KV cache" in plan.rules and "prompt_encoder.default" in plan.table()
    assert surgery.Plan.from_json(plan.to_json()).to_dict() == plan.to_dict()
