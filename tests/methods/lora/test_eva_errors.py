"""EVA's refusals: EvaConfig values (PEFT's words first, then field, value and what is valid), LoraConfig's
eva_config handling (PEFT's warnings), plan-time refusals, and bad calls of get_eva_state_dict /
initialize_lora_eva_weights, each checked to leave the model as it was (no hooks left, weights and config
unchanged, training mode restored)."""
from __future__ import annotations

import copy
import math
import warnings

import peft
import pytest
import torch

import surgery
from surgery.errors import ConfigError, ConfigTypeError, PlanError
from tests.methods.lora.test_eva import LLAMA, PREFIX, _models, batches
from tests.support import tiny_models as tm


# -- EvaConfig -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, peft_words, ours", [
    (dict(rho=-1), "`rho` must be >= 1.0", "EvaConfig.rho = -1: a layer may get at most round(r * rho) ranks"),
    (dict(rho=0.5), "`rho` must be >= 1.0", "valid: a number >= 1.0"),
    (dict(tau=-0.1), "`tau` must be between 0.0 and 1.0.", "EvaConfig.tau = -0.1: the cosine similarity"),
    (dict(tau=1.1), "`tau` must be between 0.0 and 1.0.", "valid: 0.0 <= tau <= 1.0"),
])
def test_out_of_range_values_are_refused_in_peft_words_and_ours(kwargs, peft_words, ours):
    with pytest.raises(ValueError, match=peft_words):
        peft.EvaConfig(**kwargs)
    with pytest.raises(ConfigError) as info:
        surgery.EvaConfig(**kwargs)
    assert str(info.value).startswith(peft_words) and ours in str(info.value)


@pytest.mark.parametrize("kwargs, words", [
    (dict(rho=math.nan), "EvaConfig.rho = nan"),
    (dict(tau=math.nan), "EvaConfig.tau = nan"),
    (dict(rho="2"), "EvaConfig.rho = '2' has type str; expected a number"),
    (dict(tau=True), "EvaConfig.tau = True has type bool; expected a number"),
    (dict(whiten="yes"), "EvaConfig.whiten = 'yes' has type str; expected a bool"),
    (dict(label_mask_value=-100.0), "EvaConfig.label_mask_value = -100.0 has type float; expected an int"),
])
def test_nan_and_wrong_types_are_refused_naming_field_and_value(kwargs, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        surgery.EvaConfig(**kwargs)


def test_edge_values_peft_accepts_are_accepted():
    for kwargs in (dict(rho=1.0), dict(rho=math.inf), dict(tau=0.0), dict(tau=1.0), dict(rho=3)):
        assert surgery.EvaConfig(**kwargs) == surgery.EvaConfig(**kwargs)
        peft.EvaConfig(**kwargs)


def test_eva_config_defaults_and_fields_equal_peft():
    assert surgery.EvaConfig().__dict__ == peft.EvaConfig().__dict__


# -- LoraConfig.eva_config -----------------------------------------------------------------------------------
def test_eva_init_without_eva_config_takes_the_default_with_peft_warning():
    with pytest.warns(UserWarning, match="`init_lora_weights` is 'eva' but `eva_config` is not specified. Using "
                                         "default EVA config."):
        config = surgery.LoraConfig(init_lora_weights="eva")
    assert config.eva_config == surgery.EvaConfig()


def test_eva_config_without_eva_init_is_kept_with_peft_warning():
    with pytest.warns(UserWarning, match="`eva_config` specified but will be ignored when `init_lora_weights` is not "
                                         "'eva'."):
        config = surgery.LoraConfig(init_lora_weights=True, eva_config=surgery.EvaConfig(rho=3))
    assert config.eva_config.rho == 3


def test_eva_config_round_trips_as_peft_saves_it():
    config = surgery.LoraConfig(init_lora_weights="eva", eva_config=surgery.EvaConfig(rho=1.5, whiten=True))
    theirs = peft.LoraConfig(init_lora_weights="eva", eva_config=peft.EvaConfig(rho=1.5, whiten=True))
    assert config.to_dict()["eva_config"] == theirs.to_dict()["eva_config"]
    again = surgery.LoraConfig.from_dict(config.to_dict())
    assert isinstance(again.eva_config, surgery.EvaConfig) and again.to_dict() == config.to_dict()


def test_an_eva_config_dict_is_read_and_checked():
    config = surgery.LoraConfig(init_lora_weights="eva", eva_config={"rho": 1.0, "tau": 0.5})
    assert config.eva_config == surgery.EvaConfig(rho=1.0, tau=0.5)
    with pytest.warns(UserWarning, match=r"LoraConfig.eva_config: unknown keys 'roh' \(did you mean 'rho'\?\) are ignored"):
        surgery.LoraConfig(init_lora_weights="eva", eva_config={"roh": 1.0})
    with pytest.raises(ConfigError, match=r"`rho` must be >= 1.0 \(LoraConfig.eva_config.rho = 0"):
        surgery.LoraConfig(init_lora_weights="eva", eva_config={"rho": 0})


def test_an_eva_config_of_another_type_is_refused_in_peft_words():
    with pytest.raises(TypeError, match="`EvaConfig` must be a `EvaConfig`, a dict, or None."):
        peft.LoraConfig(init_lora_weights="eva", eva_config=3)
    with pytest.raises(ConfigTypeError, match=r"`EvaConfig` must be a `EvaConfig`, a dict, or None. "
                                              r"\(LoraConfig.eva_config = 3 has type int\)"):
        surgery.LoraConfig(init_lora_weights="eva", eva_config=3)


def test_lora_bias_with_eva_is_refused_as_peft():
    with pytest.raises(ValueError, match="lora_bias=True is only supported with init_lora_weights=True or False"):
        peft.LoraConfig(init_lora_weights="eva", lora_bias=True)
    with pytest.raises(ConfigError, match="lora_bias=True is only supported with init_lora_weights=True or False"):
        surgery.LoraConfig(init_lora_weights="eva", lora_bias=True)


def test_a_convolution_target_is_refused_when_planned_model_untouched():
    model = tm.tiny_convnet()
    before = copy.deepcopy(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = surgery.LoraConfig(init_lora_weights="eva", target_modules=["conv2d", "head"])
    with pytest.raises(PlanError, match="'conv2d' is a Conv2d: init_lora_weights='eva' initialises Linear layers "
                                        "only"):
        surgery.get_peft_model(model, config)
    assert type(model.conv2d) is torch.nn.Conv2d and type(model.head) is torch.nn.Linear
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# -- get_eva_state_dict --------------------------------------------------------------------------------------
def _config(**eva):
    return surgery.LoraConfig(r=4, target_modules=LLAMA, init_lora_weights="eva", eva_config=surgery.EvaConfig(**eva))


def _no_hooks(model):
    return all(not m._forward_hooks for m in model.modules())


def test_an_empty_dataloader_is_refused_as_peft():
    with pytest.raises(ValueError, match="dataloader is empty"):
        surgery.get_eva_state_dict(tm.tiny_llama(), [], _config())


def test_a_plain_model_needs_its_config_and_the_config_its_eva_settings():
    with pytest.raises(ValueError, match="peft_config is required if model is not a PeftModel"):
        surgery.get_eva_state_dict(tm.tiny_llama(), batches(n=1))
    with pytest.raises(ConfigError, match="LoraConfig.eva_config is None: EVA needs its settings; build the config "
                                          "with init_lora_weights='eva'"):
        surgery.get_eva_state_dict(tm.tiny_llama(), batches(n=1), surgery.LoraConfig(target_modules=LLAMA))


def test_settings_changed_after_construction_are_checked_when_eva_runs():
    config = _config()
    config.eva_config.tau = 2.0
    with pytest.raises(ConfigError, match=r"`tau` must be between 0.0 and 1.0. \(LoraConfig.eva_config.tau = 2.0"):
        surgery.get_eva_state_dict(tm.tiny_llama(), batches(n=1), config)


def test_a_layer_mapping_naming_unknown_layers_is_refused_before_any_hook():
    model = tm.tiny_llama()
    mapping = {"model.layers.0.self_attn.q_proj": None, "model.layers.7.self_attn.q_proj": None}
    with pytest.raises(ValueError, match=r"prepare_layer_inputs_fn is a mapping but the following module names were "
                                         r"not found in the model: \['model.layers.7.self_attn.q_proj'\]"):
        surgery.get_eva_state_dict(model, batches(n=2), _config(), prepare_layer_inputs_fn=mapping)
    assert _no_hooks(model)


def test_more_components_than_input_features_are_refused_naming_the_layer():
    config = surgery.LoraConfig(r=20, target_modules=["q_proj"], init_lora_weights="eva",
                                eva_config=surgery.EvaConfig(rho=2.0))
    with pytest.raises(ConfigError, match=r"layer 'model.layers.0.self_attn.q_proj' would keep round\(r \* rho\) = 40 "
                                          r"components of its 32-dimensional inputs"):
        surgery.get_eva_state_dict(tm.tiny_llama(), batches(n=2), config)


def test_a_very_large_rho_is_capped_as_peft_and_still_refused_when_too_many_components():
    """rho > 1000 is capped at (largest parameter dimension) // r, as PEFT: here 128 // 4 = 32, so 128 components of
    32-dimensional inputs, refused before the model runs (PEFT, with fewer rows than that per batch, skips every
    SVD step and cycles the dataloader forever)."""
    model = tm.tiny_llama()
    with pytest.raises(ConfigError, match=r"would keep round\(r \* rho\) = 128 components of its 32-dimensional"):
        surgery.get_eva_state_dict(model, batches(n=2), _config(rho=math.inf))
    assert _no_hooks(model)


def test_batches_too_small_for_the_components_are_refused_after_one_pass_not_looped_forever():
    """PEFT skips the SVD step of such a batch and cycles the dataloader forever; surgery stops after one pass."""
    model = tm.tiny_llama().train()
    tiny = batches(n=3, batch=1, seq=4, padded=False)   # 4 rows per batch, 8 components (r=4, rho=2)
    with pytest.raises(ValueError, match=r"over a full pass of the dataloader, layers \['model.layers.0.self_attn"
                                         r".q_proj', .*\] never received as many input rows in one batch as their "
                                         r"components \(\[8, "):
        surgery.get_eva_state_dict(model, tiny, _config(), show_progress_bar=False)
    assert _no_hooks(model) and model.training


def test_a_layer_the_forward_never_reaches_is_named():
    def forward(model, batch):   # runs the first decoder layer's attention only
        model.model.layers[0].self_attn.q_proj(model.model.embed_tokens(batch["input_ids"]))

    model = tm.tiny_llama()
    with pytest.raises(ValueError, match=r"layers \['model.layers.0.self_attn.v_proj', .*\] received no input when "
                                         r"forward_fn ran the first batch"):
        surgery.get_eva_state_dict(model, batches(n=2), _config(), forward_fn=forward, prepare_model_inputs_fn=None,
                                   prepare_layer_inputs_fn=None)
    assert _no_hooks(model)


def test_a_dataloader_without_length_is_refused():
    with pytest.raises(TypeError, match="dataloader must have a length"):
        surgery.get_eva_state_dict(tm.tiny_llama(), iter(batches(n=2)), _config())


def test_a_model_input_function_for_dicts_refuses_other_batches_clearly():
    with pytest.raises(TypeError, match="When using `prepare_model_inputs_fn_language_modeling` inputs must be a "
                                        "dictionary"):
        surgery.get_eva_state_dict(tm.tiny_llama(), [batches(n=1)[0]["input_ids"]], _config())


# -- initialize_lora_eva_weights -----------------------------------------------------------------------------
def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, model.peft_config["default"].to_dict()


def _unchanged(model, snapshot):
    state, config = snapshot
    now = model.state_dict()
    return set(now) == set(state) and all(torch.equal(now[k], v) for k, v in state.items()) and \
        model.peft_config["default"].to_dict() == config


def test_initialising_needs_a_peft_model_with_eva_and_data():
    with pytest.raises(ValueError, match="model must be a PeftModel"):
        surgery.initialize_lora_eva_weights(tm.tiny_llama(), batches(n=1))
    plain = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_modules=LLAMA))
    with pytest.raises(ValueError, match=r"can only be used with `init_lora_weights='eva'` \(adapter 'default' has "
                                         r"init_lora_weights=True\)"):
        surgery.initialize_lora_eva_weights(plain, batches(n=1))
    ours, _ = _models(tm.tiny_llama(), None, r=4, target_modules=LLAMA)
    with pytest.raises(ValueError, match="dataloader is required if eva_state_dict is not provided"):
        surgery.initialize_lora_eva_weights(ours)
    with pytest.raises(ValueError, match=r"adapter 'other' not found; adapters: \['default'\]"):
        surgery.initialize_lora_eva_weights(ours, batches(n=1), adapter_name="other")


def test_two_active_adapters_are_refused_as_peft():
    ours, _ = _models(tm.tiny_llama(), None, r=4, target_modules=LLAMA)
    ours.add_adapter("other", surgery.LoraConfig(target_modules=["q_proj"]))
    ours.base_model.set_adapter(["default", "other"])
    with pytest.raises(ValueError, match="`initialize_lora_eva_weights` currently only works with a single active "
                                         "adapter"):
        surgery.initialize_lora_eva_weights(ours, batches(n=1))


@pytest.mark.parametrize("bad, words", [
    (torch.zeros(3, 16), r"has shape \(3, 16\): .*v_proj takes 32 input features, so lora_A\['default'\] needs "
                         r"\(rank, 32\)"),
    (torch.zeros(32), r"must be a 2-D tensor \(rank, in_features\), got \(32,\)"),
    (torch.full((2, 32), math.nan), "holds NaN or inf values"),
])
def test_a_bad_state_dict_entry_is_refused_before_any_layer_changes(bad, words):
    ours, _ = _models(tm.tiny_llama(), dict(tau=0.9), r=4, target_modules=LLAMA)
    state = surgery.get_eva_state_dict(ours, batches(), show_progress_bar=False)
    state[PREFIX + "model.layers.1.self_attn.v_proj"] = bad   # the layers before it are valid
    snapshot = _snapshot(ours)
    with pytest.raises(ValueError, match=words):
        surgery.initialize_lora_eva_weights(ours, eva_state_dict=state)
    assert _unchanged(ours, snapshot)


def test_rows_for_a_layer_eva_does_not_initialise_are_refused():
    ours, _ = _models(tm.tiny_llama(), dict(tau=0.9), r=4, target_modules=["q_proj", "embed_tokens"])
    snapshot = _snapshot(ours)
    with pytest.raises(ValueError, match=r"model.embed_tokens is a Embedding LoRA layer, which EVA does not initialise "
                                         r"\(only a rank of 0, removing its adapter, is accepted\)"):
        surgery.initialize_lora_eva_weights(ours, eva_state_dict={"model.embed_tokens": torch.zeros(2, 128)})
    assert _unchanged(ours, snapshot)


def test_keys_naming_no_layer_are_warned_about_and_the_callers_dict_is_left_alone():
    ours, _ = _models(tm.tiny_llama(), dict(tau=0.9), r=4, target_modules=LLAMA)
    state = surgery.get_eva_state_dict(ours, batches(), show_progress_bar=False)
    state["model.layers.9.self_attn.q_proj"] = torch.zeros(2, 32)
    keys = list(state)
    with pytest.warns(UserWarning, match=r"eva_state_dict: \['model.layers.9.self_attn.q_proj'\] name no LoRA layer "
                                         r"of adapter 'default'; they are ignored"):
        surgery.initialize_lora_eva_weights(ours, eva_state_dict=state)
    assert list(state) == keys
