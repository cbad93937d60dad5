"""VeraConfig validation (each bad value refused with a ConfigError naming the field and the value), the plan's
figures against PEFT's print_trainable_parameters, its notes, and the per-architecture default targets."""
from __future__ import annotations

import logging
import warnings

import peft
import pytest

import surgery
from surgery.errors import ConfigError, PlanError
from tests.support import tiny_models as tm
from tests.support.helpers import printed_line


@pytest.mark.parametrize("kwargs, words", [
    (dict(r=0), ["VeraConfig.r", "0", "> 0"]),
    (dict(r=-4), ["VeraConfig.r", "-4"]),
    (dict(r=2.5), ["VeraConfig.r", "2.5", "int"]),
    (dict(vera_dropout=1.5), ["vera_dropout", "1.5", "<= 1.0"]),
    (dict(vera_dropout=-0.1), ["vera_dropout", "-0.1", ">= 0.0"]),
    (dict(d_initial=float("inf")), ["d_initial", "inf", "finite"]),
    (dict(d_initial=float("nan")), ["d_initial", "nan", "finite"]),
    (dict(projection_prng_key=2 ** 64), ["projection_prng_key", str(2 ** 64), "seed"]),
    (dict(projection_prng_key=1.5), ["projection_prng_key", "1.5", "int"]),
    (dict(bias="lora_only"), ["bias", "lora_only", "vera_only"]),
    (dict(save_projection="yes"), ["save_projection", "yes", "bool"]),
    (dict(layers_pattern="layers"), ["layers_pattern", "layers_to_transform"]),
    (dict(target_modules=".*q_proj", layers_to_transform=[0]), ["layers_to_transform", "regex"]),
])
def test_bad_values_are_refused_by_name(kwargs, words):
    with pytest.raises(ConfigError) as info:
        surgery.VeraConfig(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_peft_defaults_and_a_round_trip():
    ours = surgery.VeraConfig()
    assert (ours.r, ours.projection_prng_key, ours.save_projection, ours.d_initial, ours.init_weights) == \
        (256, 0, True, 0.1, True)
    assert surgery.VeraConfig.from_dict(ours.to_dict()).to_dict() == ours.to_dict()


@pytest.mark.parametrize("builder, kwargs", [
    (tm.tiny_llama, dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4)),
    (tm.tiny_gpt2, dict(target_modules=["c_attn", "c_fc"], r=16, fan_in_fan_out=True)),
    (tm.tiny_bert_seq_cls, dict(target_modules=["query", "value"], r=8, task_type="SEQ_CLS", bias="vera_only")),
])
def test_plan_totals_and_printed_line_equal_peft(builder, kwargs):
    plan = surgery.plan(builder(), surgery.VeraConfig(**kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(builder(), peft.VeraConfig(**kwargs))
    assert plan.totals_line() == printed_line(theirs)
    assert printed_line(surgery.get_peft_model(builder(), surgery.VeraConfig(**kwargs))) == printed_line(theirs)


def test_plan_notes_conv1d_and_unsaved_projections(caplog):
    with caplog.at_level(logging.WARNING):
        plan = surgery.plan(tm.tiny_gpt2(), surgery.VeraConfig(target_modules=["c_attn"], r=4,
                                                              save_projection=False))
    assert any("fan_in_fan_out is set to True" in w for w in plan.warnings)
    assert any("save_projection=False" in w and "projection_prng_key" in w for w in plan.warnings)


def test_default_targets_are_peft_s_and_embeddings_are_refused():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.VeraConfig(r=2))
    assert sorted(model.peft_config["default"].target_modules) == ["q_proj", "v_proj"]
    with pytest.raises(PlanError, match="Embedding.*supported: torch.nn.Linear, transformers"):
        surgery.plan(tm.tiny_llama(), surgery.VeraConfig(target_modules=["embed_tokens"], r=2))


def test_default_target_table_is_peft_s():
    from peft.utils.other import TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING

    assert surgery.methods.vera.SPEC.default_targets == TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING
