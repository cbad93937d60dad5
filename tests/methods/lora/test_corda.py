"""CorDA (init_lora_weights="corda", preprocess_corda, CordaConfig) against peft 0.21.2 on the same tiny models and
calibration samples: the covariances and triplets preprocess_corda stores, the factors, the rewritten base weights
and logits, the identity at init, the cache / covariance files, the save-time conversion, refusals and config.

Tolerance 1e-5 against peft (the same float32 products, inverse and SVD: measured 0.0) and for the identity at init
against the original model (the residual's rounding, ~1e-7).
"""
from __future__ import annotations

import copy
import json
import warnings

import peft
import pytest
import torch
from peft.tuners.lora.config import CordaConfig as PeftCordaConfig
from peft.tuners.lora.corda import preprocess_corda as peft_preprocess_corda
from safetensors.torch import load_file

import surgery
from surgery.errors import CheckpointError, ConfigError, PlanError
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff, write_pickle_payload

TOL = 1e-5
IDS = tm.token_batch(batch=4)
TARGETS = ["q_proj", "v_proj", "down_proj"]


def _calibration(model, ids=IDS):
    """run_model for preprocess_corda: one sample per forward call, as PEFT's hook expects."""
    def run():
        for row in range(ids.shape[0]):
            model(input_ids=ids[row:row + 1])
    return run


def _pair(base, method="ipm", **kwargs):
    """(surgery model, peft model, surgery config) after preprocess_corda and get_peft_model on equal copies."""
    kwargs = {"r": 4, "lora_alpha": 8, "target_modules": TARGETS, "init_lora_weights": "corda", **kwargs}
    theirs_base, ours_base = copy.deepcopy(base), copy.deepcopy(base)
    theirs_config = peft.LoraConfig(corda_config=PeftCordaConfig(corda_method=method), **kwargs)
    ours_config = surgery.LoraConfig(corda_config=surgery.CordaConfig(corda_method=method), **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_preprocess_corda(theirs_base, theirs_config, run_model=_calibration(theirs_base))
        surgery.preprocess_corda(ours_base, ours_config, run_model=_calibration(ours_base))
        # copies: PEFT's corda_init divides its S by the scaling in place before deleting the triplets
        eigens = [(_copied(getattr(m, "eigens", None)), _copied(getattr(o, "eigens", None)))
                  for m, o in zip(theirs_base.modules(), ours_base.modules())]
        theirs = peft.get_peft_model(theirs_base, theirs_config)
        ours = surgery.get_peft_model(ours_base, ours_config)
    return ours, theirs, [pair for pair in eigens if pair[0] is not None]


def _copied(eigens):
    return None if eigens is None else {k: getattr(eigens, k).clone() for k in ("S_WC", "U_WC", "V_WC")}


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("method", ["ipm", "kpm"])
@pytest.mark.parametrize("extra", [{}, {"rank_pattern": {"v_proj": 2}, "alpha_pattern": {"q_proj": 4}}],
                         ids=["plain", "patterns"])
def test_triplets_factors_base_and_logits_equal_peft(method, extra):
    ours, theirs, eigens = _pair(tm.tiny_llama(), method, **extra)
    assert len(eigens) == 2 * len(TARGETS)
    for their, our in eigens:
        for key in ("S_WC", "U_WC", "V_WC"):
            assert max_diff(their[key], our[key]) <= TOL
    mine, other = ours.state_dict(), theirs.state_dict()
    assert set(mine) == set(other) and max(max_diff(mine[k], other[k]) for k in mine) <= TOL
    assert max_diff(_logits(ours), _logits(theirs)) <= TOL
    assert max_diff(_logits(ours), _logits(tm.tiny_llama())) <= TOL   # the identity at init
    assert not any(hasattr(m, "eigens") for m in ours.modules())        # used once, as PEFT


def test_gpt2_conv1d_equals_peft():
    ours, theirs, _ = _pair(tm.tiny_gpt2(), target_modules=["c_attn", "c_fc"])
    mine, other = ours.state_dict(), theirs.state_dict()
    assert max(max_diff(mine[k], other[k]) for k in mine) <= TOL
    assert max_diff(_logits(ours), _logits(theirs)) <= TOL


def test_cache_and_covariance_files_are_written_and_reused(tmp_path):
    settings = dict(cache_file=str(tmp_path / "c" / "cache.pt"), covariance_file=str(tmp_path / "cov.pt"),
                    prune_temporary_fields=False)
    config = surgery.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights="corda",
                                corda_config=surgery.CordaConfig(**settings))
    first = tm.tiny_llama()
    surgery.preprocess_corda(first, config, run_model=_calibration(first))
    layer = first.model.layers[0].self_attn.q_proj
    assert layer.sample_count == IDS.shape[0] and layer.rank == 4 and layer.corda_method == "ipm"
    for reuse in ({}, {"cache_file": None}):   # from the cache, then from the covariances alone
        again = tm.tiny_llama()
        config.corda_config = surgery.CordaConfig(**{**settings, **reuse})
        surgery.preprocess_corda(again, config)   # no run_model: the files are enough
        other = again.model.layers[0].self_attn.q_proj
        assert all(max_diff(getattr(other.eigens, k), getattr(layer.eigens, k)) <= TOL for k in ("S_WC", "U_WC", "V_WC"))


@pytest.mark.parametrize("which", ["cache_file", "covariance_file"])
def test_a_pickled_payload_in_a_corda_file_never_runs(tmp_path, which):
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    write_pickle_payload(path, marker)
    config = surgery.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights="corda",
                                corda_config=surgery.CordaConfig(**{which: str(path)}))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        surgery.preprocess_corda(tm.tiny_llama(), config)
    assert not marker.exists()


def test_conversion_to_plain_lora_equals_peft(tmp_path):
    base = tm.tiny_llama()
    ours, theirs, _ = _pair(base)
    saved = {}
    for name, model in (("peft", theirs), ("surgery", ours)):
        model.peft_config["default"].init_lora_weights = True
        model.save_pretrained(tmp_path / name / "init")
        model.peft_config["default"].init_lora_weights = "corda"
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for key, param in sorted(model.named_parameters()):
                if "lora_" in key:
                    param.add_(0.1 * torch.randn(param.shape, generator=generator))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save_pretrained(tmp_path / name / "out", path_initial_model_for_weight_conversion=tmp_path / name / "init")
        converted = surgery.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / name / "out")
        assert max_diff(_logits(converted), _logits(model)) <= TOL
        saved[name] = load_file(tmp_path / name / "out" / "adapter_model.safetensors")
    assert max(max_diff(saved["surgery"][k], saved["peft"][k]) for k in saved["peft"]) <= TOL
    assert json.loads((tmp_path / "surgery" / "out" / "adapter_config.json").read_text())["r"] == 8


def test_without_preprocess_or_with_another_rank_the_plan_refuses_and_nothing_changes():
    model = tm.tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlanError, match="`eigens` attribute not found for layer, please run `preprocess_corda`"):
        surgery.get_peft_model(model, surgery.LoraConfig(target_modules=TARGETS, init_lora_weights="corda"))
    config = surgery.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights="corda")
    surgery.preprocess_corda(model, config, run_model=_calibration(model))
    with pytest.raises(PlanError, match=r"Matrix U size mismatch: \(32, 4\) vs. \(32, 8\)"):
        surgery.get_peft_model(model, surgery.LoraConfig(r=8, target_modules=TARGETS, init_lora_weights="corda"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_preprocess_refuses_what_it_cannot_measure():
    model = tm.tiny_llama()
    config = surgery.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights="corda")
    with pytest.raises(ValueError, match="run_model must be specified"):
        surgery.preprocess_corda(model, config)
    with pytest.raises(ValueError, match="run_model never ran"):
        surgery.preprocess_corda(model, config, run_model=lambda: None)
    with pytest.raises(ValueError, match="r=40 for 'model.layers.0.self_attn.q_proj', which has only 32"):
        big = surgery.LoraConfig(r=40, target_modules=["q_proj"], init_lora_weights="corda")
        surgery.preprocess_corda(model, big, run_model=_calibration(model))


def test_corda_config_defaults_saved_dict_and_warnings_equal_peft(tmp_path):
    assert vars(surgery.CordaConfig()) == vars(PeftCordaConfig())
    message = "`init_lora_weights` is 'corda' but `corda_config` is not specified. Using default CorDA config."
    with pytest.warns(surgery.PeftWarning, match=message):
        ours = surgery.LoraConfig(init_lora_weights="corda", target_modules=["q_proj"])
    with pytest.warns(UserWarning, match=message):
        theirs = peft.LoraConfig(init_lora_weights="corda", target_modules=["q_proj"])
    assert vars(ours.corda_config) == vars(theirs.corda_config)
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    read = {side: json.loads((tmp_path / side / "adapter_config.json").read_text())["corda_config"]
            for side in ("ours", "theirs")}
    assert read["ours"] == read["theirs"]
    again = surgery.LoraConfig.from_pretrained(tmp_path / "theirs")
    assert isinstance(again.corda_config, surgery.CordaConfig) and vars(again.corda_config) == read["ours"]
    with pytest.warns(surgery.PeftWarning, match="`corda_config` specified but will be ignored"):
        surgery.LoraConfig(corda_config=surgery.CordaConfig())


@pytest.mark.parametrize("value, words", [
    (surgery.CordaConfig(corda_method="fast"), "corda_config.corda_method = 'fast' is not valid; valid: 'ipm'"),
    ({"corda_method": "ipm", "verbose": "yes"}, "corda_config.verbose = 'yes' has type str"),
    (4, "corda_config = 4 has type int"),
])
def test_bad_corda_config_is_refused_naming_the_field(value, words):
    with pytest.raises(ConfigError) as info:
        surgery.LoraConfig(init_lora_weights="corda", corda_config=value)
    assert words in str(info.value)
