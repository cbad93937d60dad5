"""init_lora_weights = "pissa", "pissa_niter_N", "olora", "orthogonal" against peft 0.21.2 on the same tiny
models and seed: A, B and the rewritten base weights, logits, the identity at init, the save-time conversion to
a plain LoRA adapter, plan-time refusals (model untouched) and notes, and the config values.

Tolerances: 1e-5 against peft (both run the same float32 SVD / QR / random draws: measured 0.0); 1e-5 for the
identity at init against the original model (the residual's float32 rounding, measured ~1e-7).
"""
from __future__ import annotations

import copy
import json
import warnings

import peft
import pytest
import torch
from safetensors.torch import load_file

import surgery
from surgery.errors import ConfigError, PlanError, UnsupportedOptionError
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff
from tests.support.quantized_models import exact_logits, quantized

TOL = 1e-5
IDS = tm.token_batch()
LLAMA_TARGETS = ["q_proj", "v_proj", "down_proj"]
INITS = ["pissa", "pissa_niter_4", "olora", "OLoRA", "orthogonal"]


def _pair(base, seed=3, **kwargs):
    """(surgery model, peft model) built from equal copies of `base` after the same torch seed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
        torch.manual_seed(seed)
        ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**kwargs))
    return ours, theirs


def _assert_same_state(ours, theirs):
    """Every tensor of both models (adapter factors and base weights) equal within TOL, and the same keys."""
    mine, other = ours.state_dict(), theirs.state_dict()
    assert set(mine) == set(other)
    worst = max(max_diff(mine[k], other[k]) for k in mine)
    assert worst <= TOL, worst


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


# -- parity with peft ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("extra", [{}, {"use_rslora": True, "rank_pattern": {"v_proj": 4}, "alpha_pattern":
                                        {"q_proj": 32}}, {"use_dora": True}], ids=["plain", "patterns", "dora"])
def test_factors_rewritten_base_and_logits_equal_peft(init, extra):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # rslora with patterns: the conversion warning (asserted below)
        ours, theirs = _pair(tm.tiny_llama(), r=8, lora_alpha=16, target_modules=LLAMA_TARGETS,
                             init_lora_weights=init, **extra)
    _assert_same_state(ours, theirs)
    assert max_diff(_logits(ours), _logits(theirs)) <= TOL


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_2", "orthogonal"])
def test_gpt2_conv1d_fan_in_fan_out_equals_peft(init):
    ours, theirs = _pair(tm.tiny_gpt2(), r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], init_lora_weights=init)
    _assert_same_state(ours, theirs)
    assert max_diff(_logits(ours), _logits(theirs)) <= TOL


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_bfloat16_base_equals_peft(init):
    ours, theirs = _pair(tm.tiny_llama().to(torch.bfloat16), r=4, lora_alpha=8, target_modules=LLAMA_TARGETS,
                         init_lora_weights=init)
    _assert_same_state(ours, theirs)   # bf16 residuals rounded alike; factors float32 after autocast, as PEFT
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.base_layer.weight.dtype == torch.bfloat16 and layer.lora_A["default"].weight.dtype == torch.float32


def test_olora_on_bitsandbytes_bases_requantizes_as_peft():
    for kind in ("nf4", "int8"):
        ours, theirs = _pair_quantized(kind, init_lora_weights="olora")
        _assert_same_state(ours, theirs)   # the requantized 4-bit / 8-bit bytes and scales included
        assert max_diff(exact_logits(ours, IDS), exact_logits(theirs, IDS)) <= TOL


def _pair_quantized(kind, **kwargs):
    kw = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (surgery.get_peft_model(quantized(kind), surgery.LoraConfig(**kw)),
                peft.get_peft_model(quantized(kind), peft.LoraConfig(**kw)))


def test_embedding_targets_keep_the_default_embedding_init_as_peft():
    base = tm.tiny_embed_mlp()
    kw = dict(r=4, target_modules=["emb", "lin0"], init_lora_weights="pissa")
    plan = surgery.plan(base, surgery.LoraConfig(**kw))
    assert any("Embedding targets get LoRA's default embedding init" in w for w in plan.warnings)
    ours, theirs = _pair(base, **kw)
    _assert_same_state(ours, theirs)
    assert (ours.base_model.model.emb.lora_embedding_A["default"] == 0).all()


# -- what the init preserves ---------------------------------------------------------------------------------
@pytest.mark.parametrize("init", INITS)
def test_adapted_model_equals_the_original_before_training(init):
    base = tm.tiny_llama()
    model = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(
        r=8, lora_alpha=16, target_modules=LLAMA_TARGETS, init_lora_weights=init))
    assert max_diff(_logits(model), _logits(base)) <= TOL
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    weight, original = layer.base_layer.weight, base.model.layers[0].self_attn.q_proj.weight
    if init == "orthogonal":   # the base is untouched; B A = 0 by construction (orthonormal rows of Q)
        assert torch.equal(weight, original)
        assert (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).abs().max() < 1e-6
    else:                      # the base holds the residual W - s B A
        assert max_diff(weight + layer.get_delta_weight("default"), original) <= TOL
        assert max_diff(weight, original) > 1e-3


def test_pissa_factors_are_the_principal_singular_components():
    base = tm.tiny_llama()
    model = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights="pissa"))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    U, S, Vh = torch.linalg.svd(base.model.layers[0].self_attn.q_proj.weight, full_matrices=False)
    top = (U[:, :4] * S[:4]) @ Vh[:4]   # Eckart-Young: the best rank-4 part of W
    assert max_diff(layer.get_delta_weight("default"), top) <= TOL


# -- save, load, and the conversion to plain LoRA ------------------------------------------------------------
def _trained(lib, base, tmp_path, init, **extra):
    """A `lib` model with init `init`, its initial adapter saved in tmp/lib/init, then 'trained' (factors moved)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lib.get_peft_model(copy.deepcopy(base), lib.LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=init, **extra))
    model.peft_config["default"].init_lora_weights = True   # PEFT's recipe for the initial adapter
    model.save_pretrained(tmp_path / lib.__name__ / "init")
    model.peft_config["default"].init_lora_weights = init
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model


@pytest.mark.parametrize("init, extra", [("pissa", {}), ("olora", {}), ("pissa", {"use_rslora": True}),
                                         ("pissa", {"rank_pattern": {"v_proj": 2}, "alpha_pattern": {"q_proj": 4}})])
def test_conversion_saves_peft_tensors_and_config_that_run_on_the_original_base(tmp_path, init, extra):
    base = tm.tiny_llama()
    saved = {}
    for lib in (peft, surgery):
        model = _trained(lib, base, tmp_path, init, **extra)
        before = model.peft_config["default"].to_dict()
        out = tmp_path / lib.__name__ / "converted"
        model.save_pretrained(out, path_initial_model_for_weight_conversion=tmp_path / lib.__name__ / "init")
        assert model.peft_config["default"].to_dict() == before and list(model.peft_config) == ["default"]
        converted = lib.PeftModel.from_pretrained(copy.deepcopy(base), out)   # the ORIGINAL base
        assert max_diff(_logits(converted), _logits(model)) <= TOL
        assert max_diff(converted.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight,
                        base.model.layers[0].self_attn.q_proj.weight) == 0
        saved[lib.__name__] = (load_file(out / "adapter_model.safetensors"),
                               json.loads((out / "adapter_config.json").read_text()),
                               json.loads((tmp_path / lib.__name__ / "init" / "adapter_config.json").read_text()))
    (theirs, their_config, their_init), (ours, our_config, our_init) = saved["peft"], saved["surgery"]
    assert set(ours) == set(theirs) and max(max_diff(ours[k], theirs[k]) for k in ours) <= TOL
    for key in ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "init_lora_weights", "use_rslora"):
        assert our_config[key] == their_config[key], key
    assert our_config["r"] == 8 and our_init["init_lora_weights"] is their_init["init_lora_weights"] is True


def test_converted_adapter_loads_in_peft_and_a_saved_pissa_adapter_reloads(tmp_path):
    base = tm.tiny_llama()
    model = _trained(surgery, base, tmp_path, "pissa")
    model.save_pretrained(tmp_path / "pissa")   # init 'pissa': loading decomposes the original base again
    model.save_pretrained(tmp_path / "converted", path_initial_model_for_weight_conversion=tmp_path / "surgery" / "init")
    reloaded = surgery.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "pissa")
    assert max_diff(_logits(reloaded), _logits(model)) <= TOL
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "converted")
    assert max_diff(_logits(theirs), _logits(model)) <= TOL


def test_conversion_refuses_rslora_with_patterns_before_writing_anything(tmp_path):
    with pytest.warns(surgery.PeftWarning, match="Using Rank-Stabilized LoRA with rank_pattern/alpha_pattern"):
        config = surgery.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa", use_rslora=True,
                                    rank_pattern={"q_proj": 2})
    model = surgery.get_peft_model(tm.tiny_llama(), config)
    model.save_pretrained(tmp_path / "init")
    written = (tmp_path / "init" / "adapter_config.json").read_text()
    with pytest.raises(ValueError, match="Passing `path_initial_model_for_weight_conversion` to `save_pretrained` "
                                         "is not supported when using `rank_pattern`"):
        model.save_pretrained(tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "init")
    assert not (tmp_path / "out").exists() and (tmp_path / "init" / "adapter_config.json").read_text() == written


def test_conversion_of_a_method_without_one_is_refused_as_peft(tmp_path):
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.IA3Config(target_modules=["q_proj"], feedforward_modules=[]))
    with pytest.raises(ValueError, match="`path_initial_model_for_weight_conversion` .* not supported for IA3Model"):
        model.save_pretrained(tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "init")
    assert not (tmp_path / "out").exists()


# -- refused where it cannot run, noted where it rewrites W ----------------------------------------------------
@pytest.mark.parametrize("base, kwargs, words", [
    (tm.tiny_llama, dict(init_lora_weights="orthogonal", r=7),
     "Orthogonal initialization requires the LoRA rank to be even, got 7 instead."),
    (tm.tiny_llama, dict(init_lora_weights="pissa", rank_pattern={"down_proj": 40}), "r=40 must be <= 32"),
    (tm.tiny_llama, dict(init_lora_weights="olora", rank_pattern={"v_proj": 17}), "r=17 must be <= 16"),
    (lambda: tm.tiny_llama().double(), dict(init_lora_weights="pissa"), "Please initialize PiSSA under float32"),
    (lambda: tm.tiny_llama().double(), dict(init_lora_weights="olora"), "Unsupported data type for the base layer"),
    (tm.tiny_gpt2, dict(init_lora_weights="olora", target_modules=["c_attn"]), "does not support fan_in_fan_out"),
    (tm.tiny_convnet, dict(init_lora_weights="pissa", target_modules=["conv2d", "head"]), "supports Linear layers"),
    (lambda: quantized("nf4"), dict(init_lora_weights="pissa_niter_2"), "Please initialize PiSSA under float32"),
])
def test_refused_at_plan_time_naming_the_module_and_nothing_changes(base, kwargs, words):
    model = base()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = {"target_modules": LLAMA_TARGETS, **kwargs}
    with pytest.raises(PlanError, match=words.replace("(", r"\(").replace(")", r"\)")):
        surgery.get_peft_model(model, surgery.LoraConfig(**kwargs))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(hasattr(m, "lora_A") for m in model.modules())


def test_plan_notes_that_pissa_and_olora_rewrite_the_base_weights():
    for init, words in (("pissa", "PiSSA rewrites the base weights"), ("olora", "OLoRA rewrites the base weights")):
        plan = surgery.plan(tm.tiny_llama(), surgery.LoraConfig(target_modules=LLAMA_TARGETS, init_lora_weights=init))
        notes = [w for w in plan.warnings if words in w]
        assert len(notes) == 1 and "path_initial_model_for_weight_conversion" in notes[0]
    plan = surgery.plan(tm.tiny_llama(), surgery.LoraConfig(target_modules=LLAMA_TARGETS, init_lora_weights="orthogonal"))
    assert not any("rewrites the base weights" in w for w in plan.warnings)


def test_a_nan_weight_is_refused_before_any_layer_is_rewritten():
    model = tm.tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    q_before = model.model.layers[0].self_attn.q_proj.weight.clone()
    with pytest.raises(PlanError, match="'model.layers.1.mlp.down_proj'.*NaN or inf"):
        surgery.get_peft_model(model, surgery.LoraConfig(target_modules=LLAMA_TARGETS, init_lora_weights="pissa"))
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, q_before)


# -- config values -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("init", ["pissa", "pissa_niter_0", "pissa_niter_16", "olora", "OLoRA", "orthogonal", "corda"])
def test_config_values_round_trip_and_match_peft(init, tmp_path):
    ours = surgery.LoraConfig(init_lora_weights=init, target_modules=["q_proj"])
    ours.save_pretrained(tmp_path)
    again = surgery.LoraConfig.from_pretrained(tmp_path)
    assert again.init_lora_weights == init and again.to_dict() == ours.to_dict()
    peft.LoraConfig(init_lora_weights=init).save_pretrained(tmp_path / "peft")
    assert surgery.LoraConfig.from_pretrained(tmp_path / "peft").init_lora_weights == init


@pytest.mark.parametrize("value, error, words", [
    ("pissa_niter_x", ConfigError, "'pissa_niter_x' is not valid: after 'pissa_niter_' comes the number of subspace"),
    ("pissa_niter_-1", ConfigError, "a non-negative integer"),
    ("pissa_niter_", ConfigError, "a non-negative integer"),
    ("pisa", ConfigError, "did you mean 'pissa'"),
    ("Orthogonal", ConfigError, "valid: True, False, 'gaussian', 'pissa', 'pissa_niter_<N>'"),
    (3, ConfigError, "init_lora_weights = 3 has type int"),
    ("lora_ga", UnsupportedOptionError, "'lora_ga': this PEFT initialisation is not supported by surgery yet"),
    ("lora_ga", UnsupportedOptionError, "supported: True, False, 'gaussian', 'pissa'"),
    ("mica", UnsupportedOptionError, "not supported by surgery yet"),
])
def test_bad_init_values_are_refused_naming_field_value_and_choices(value, error, words):
    with pytest.raises(error) as info:
        surgery.LoraConfig(init_lora_weights=value)
    assert "LoraConfig.init_lora_weights" in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("init", ["gaussian", "pissa", "pissa_niter_3", "olora", "orthogonal"])
def test_lora_bias_with_a_non_default_init_is_refused_as_peft(init):
    with pytest.raises(ValueError, match="The argument lora_bias=True is only supported with init_lora_weights=True"):
        peft.LoraConfig(target_modules=["q"], lora_bias=True, init_lora_weights=init)
    with pytest.raises(ConfigError, match="The argument lora_bias=True is only supported with init_lora_weights=True"):
        surgery.LoraConfig(target_modules=["q"], lora_bias=True, init_lora_weights=init)
