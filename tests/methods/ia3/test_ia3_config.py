"""IA3Config checks (each bad value named), PEFT's default targets and feed-forward modules by model type, PEFT's
feed-forward matching (a plain suffix, or a full-match regex), and the layer types PEFT refuses."""
from __future__ import annotations

import warnings

import peft
import pytest
from torch import nn

import surgery
from surgery.errors import ConfigError, PlanError
from surgery.plan.table import render
from tests.support import tiny_models as tm
from tests.support.helpers import MODELS, printed_line


def _peft(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(model, peft.IA3Config(**kwargs))


def _scaled_sides(model) -> dict[str, tuple]:
    """{module path: ia3_l shape} of adapter 'default'."""
    return {n.removeprefix("base_model.model.").removesuffix(".ia3_l.default"): tuple(p.shape)
            for n, p in model.named_parameters() if ".ia3_l." in n}


def test_feedforward_must_be_a_subset_of_the_targets():
    with pytest.raises(ConfigError, match=r"feedforward_modules = \['down_proj', 'up_proj'\] is not a subset of "
                                          r"target_modules = \['down_proj'\]: \['up_proj'\]"):
        surgery.IA3Config(target_modules=["down_proj"], feedforward_modules=["down_proj", "up_proj"])
    with pytest.raises(ValueError, match="subset"):
        peft.IA3Config(target_modules=["down_proj"], feedforward_modules=["down_proj", "up_proj"])
    # compared literally, as PEFT does: 'mlp.down_proj' is not the name 'down_proj'
    with pytest.raises(ConfigError, match="mlp.down_proj"):
        surgery.IA3Config(target_modules=["down_proj"], feedforward_modules=["mlp.down_proj"])
    with pytest.raises(ValueError):
        peft.IA3Config(target_modules=["down_proj"], feedforward_modules=["mlp.down_proj"])
    # a regex on either side is not checked (PEFT neither)
    surgery.IA3Config(target_modules=".*proj", feedforward_modules=["down_proj"])
    surgery.IA3Config(target_modules=["down_proj"], feedforward_modules=".*up_proj")


@pytest.mark.parametrize("kwargs, field", [
    (dict(feedforward_modules="(down"), "feedforward_modules"),
    (dict(target_modules="q_proj("), "target_modules"),
    (dict(exclude_modules="[x"), "exclude_modules"),
    (dict(init_ia3_weights="yes"), "init_ia3_weights"),
    (dict(fan_in_fan_out=1), "fan_in_fan_out"),
    (dict(feedforward_modules=3), "feedforward_modules"),
    (dict(modules_to_save=["("]), "modules_to_save"),
])
def test_bad_values_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"IA3Config\.{field} = "):
        surgery.IA3Config(**kwargs)


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert", "t5"])
def test_defaults_by_model_type_are_peft_s_and_saved(name):
    builder = MODELS[name][0]
    theirs = _peft(builder(), fan_in_fan_out=name == "gpt2")
    ours = surgery.get_peft_model(builder(), surgery.IA3Config(fan_in_fan_out=name == "gpt2"))
    mine, peft_saved = ours.peft_config["default"].to_dict(), theirs.peft_config["default"].to_dict()
    for key in ("target_modules", "feedforward_modules"):
        assert sorted(mine[key]) == sorted(peft_saved[key]) and mine[key], key
    assert _scaled_sides(ours) == _scaled_sides(theirs)
    assert printed_line(ours) == printed_line(theirs)
    plan = surgery.plan(builder(), surgery.IA3Config(fan_in_fan_out=name == "gpt2"))
    assert plan.trainable_params == ours.get_nb_trainable_parameters()[0]


def test_feedforward_default_fills_in_when_only_the_targets_are_given():
    """T5 with target_modules given: PEFT still takes feedforward_modules = ['wo'] from its t5 defaults."""
    ours = surgery.get_peft_model(tm.tiny_t5(), surgery.IA3Config(target_modules=["k", "v", "wo"]))
    theirs = _peft(tm.tiny_t5(), target_modules=["k", "v", "wo"])
    assert ours.peft_config["default"].feedforward_modules == ["wo"]
    assert _scaled_sides(ours) == _scaled_sides(theirs)
    assert _scaled_sides(ours)["encoder.block.0.layer.1.DenseReluDense.wo"] == (1, 64)   # input-scaled


def test_no_feedforward_default_for_an_unknown_model_type():
    with pytest.raises(ConfigError, match=r"feedforward_modules is not set .* model_type None"):
        surgery.get_peft_model(tm.tiny_convnet(), surgery.IA3Config(target_modules=["conv2d"]))
    with pytest.raises(ValueError, match="feedforward_modules"):
        _peft(tm.tiny_convnet(), target_modules=["conv2d"])
    surgery.get_peft_model(tm.tiny_convnet(), surgery.IA3Config(target_modules=["conv2d"], feedforward_modules=[]))


@pytest.mark.parametrize("kwargs, input_scaled", [
    # a plain suffix, no '.' boundary: '_proj' makes every target input-scaled
    (dict(target_modules=".*(k_proj|down_proj)", feedforward_modules=["_proj"]), 4),
    (dict(target_modules=["k_proj", "down_proj"], feedforward_modules=r".*layers\.1\.mlp\.down_proj"), 1),
    (dict(target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"]), 2),
])
def test_feedforward_matching_is_peft_s(kwargs, input_scaled):
    ours = surgery.get_peft_model(tm.tiny_llama(), surgery.IA3Config(**kwargs))
    theirs = _peft(tm.tiny_llama(), **kwargs)
    sides = _scaled_sides(ours)
    assert sides == _scaled_sides(theirs)
    assert sum(shape[0] == 1 for shape in sides.values()) == input_scaled


class _Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3)
        self.emb = nn.Embedding(10, 4)


@pytest.mark.parametrize("target, kind", [("conv", "Conv1d"), ("emb", "Embedding")])
def test_layers_peft_does_not_wrap_are_refused(target, kind):
    with pytest.raises(PlanError, match=rf"{target!r} is a {kind}, which IA3 cannot wrap; supported: "
                                        r"torch.nn.Linear, transformers.pytorch_utils.Conv1D, torch.nn.Conv2d/3d"):
        surgery.get_peft_model(_Unsupported(), surgery.IA3Config(target_modules=[target], feedforward_modules=[]))
    with pytest.raises((ValueError, TypeError)):
        _peft(_Unsupported(), target_modules=[target], feedforward_modules=[])


def test_plan_columns_show_the_scaled_side():
    text = render(surgery.plan(tm.tiny_llama(), surgery.IA3Config()))
    assert "feedforward" in text
    down = next(line for line in text.splitlines() if "layers.0.mlp.down_proj" in line)
    k = next(line for line in text.splitlines() if "layers.0.self_attn.k_proj" in line)
    assert "True" in down and "False" in k


def test_default_tables_are_peft_s():
    from peft.utils import constants

    from surgery.methods.ia3.defaults import DEFAULT_FEEDFORWARD, DEFAULT_TARGETS
    assert DEFAULT_TARGETS == constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
    assert DEFAULT_FEEDFORWARD == constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING
