"""LNTuningConfig validation (each refusal names the field and the value), PEFT's default targets, and the plan's
warning for a target that is not a normalisation layer."""
from __future__ import annotations

import warnings

import peft
import pytest

import surgery
from surgery.errors import ConfigError
from tests.support import tiny_models as tm
from tests.support.helpers import printed_line


@pytest.mark.parametrize("kwargs, words", [
    (dict(modules_to_save="classifier"), ["modules_to_save", "'classifier'", "list", "['classifier']"]),
    (dict(target_modules="norm("), ["target_modules", "'norm('", "regular expression"]),
    (dict(exclude_modules="["), ["exclude_modules", "'['", "regular expression"]),
    (dict(target_modules=3), ["target_modules", "3", "list[str]", "expected"]),
    (dict(modules_to_save=["("]), ["modules_to_save", "'('"]),
])
def test_bad_values_are_refused_by_name(kwargs, words):
    with pytest.raises(ConfigError) as info:
        surgery.LNTuningConfig(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_an_architecture_without_a_default_asks_for_target_modules():
    with pytest.raises(ConfigError, match="Please specify `target_modules`.*there is no LN_TUNING default "
                                          "for model_type 'bert'"):
        surgery.plan(tm.tiny_bert(), surgery.LNTuningConfig())


@pytest.mark.parametrize("builder, targets", [
    (tm.tiny_llama, ["input_layernorm", "post_attention_layernorm", "norm"]),
    (tm.tiny_gpt2, ["ln_1", "ln_2", "ln_f"]),
    (tm.tiny_t5, ["layer_norm", "final_layer_norm"]),
])
def test_default_targets_and_totals_are_peft_s(builder, targets):
    ours = surgery.get_peft_model(builder(), surgery.LNTuningConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(builder(), peft.LNTuningConfig())
    assert sorted(ours.peft_config["default"].target_modules) == sorted(theirs.peft_config["default"].target_modules)
    assert sorted(ours.peft_config["default"].target_modules) == sorted(targets)
    assert printed_line(ours) == printed_line(theirs)
    assert ours.plan().totals_line() == printed_line(theirs)


def test_a_target_that_is_not_a_norm_is_copied_with_a_warning():
    plan = surgery.plan(tm.tiny_llama(), surgery.LNTuningConfig(target_modules=["q_proj", "norm"]))
    assert plan.warnings == ["LN tuning copies each targeted module and trains the copy in full; the targeted "
                             "Linear modules are not normalisation layers"]
    flagged = {r.path: r.params["non_norm"] for r in plan.rewrites}
    assert flagged == {"model.layers.0.self_attn.q_proj": True, "model.layers.1.self_attn.q_proj": True,
                       "model.norm": False}
    assert "LN_TUNING [not a norm]" in plan.table()
