"""VeRA's shared projections: PEFT's exact draws, their size, where they live (one tensor read by every layer,
filled by a checkpoint load, moved by .to()), a second adapter sharing them, delete, and the refusals of PEFT's
rules for adapters sharing one model's projections. Projections are compared bit for bit (torch.equal)."""
from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
from peft.tuners.vera.model import _kaiming_init

import surgery
from surgery.errors import CheckpointError, PlanError
from surgery.methods.vera.projections import draw
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff

from .pairs import pair, perturb, stack

LLAMA = dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4)


@pytest.mark.parametrize("seed, r, max_in, max_out", [(0, 4, 64, 32), (7, 256, 4096, 11008), (-3, 1, 1, 5)])
def test_projections_are_peft_draws(seed, r, max_in, max_out):
    vera_A, vera_B = draw(r, max_in, max_out, seed)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    assert torch.equal(vera_A, _kaiming_init((r, max_in), generator=generator))
    assert torch.equal(vera_B, _kaiming_init((max_out, r), generator=generator))


def test_projections_are_sized_by_the_largest_target_and_equal_peft():
    ours, theirs = pair("VeraConfig", tm.tiny_llama(), **LLAMA)
    for key in ("vera_A", "vera_B"):
        mine, want = getattr(ours.base_model, key)["default"], getattr(theirs.base_model, key)["default"]
        assert torch.equal(mine, want)
    assert tuple(ours.base_model.vera_A["default"].shape) == (4, 64)     # down_proj: in 64
    assert tuple(ours.base_model.vera_B["default"].shape) == (32, 4)     # q_proj / down_proj: out 32


def _layers(model):
    return [m for m in model.modules() if hasattr(m, "vera_lambda_b")]


def test_every_layer_reads_the_tuners_tensors_and_a_load_fills_them():
    ours, theirs = pair("VeraConfig", tm.tiny_llama(), **LLAMA)
    tuner = ours.base_model
    assert all(layer.vera_A is tuner.vera_A and layer.vera_B is tuner.vera_B for layer in _layers(ours))
    state = surgery.get_peft_model_state_dict(ours)
    assert {"base_model.vera_A", "base_model.vera_B"} <= set(state)
    state = {k: v * 2 if k.startswith("base_model.vera_") else v for k, v in state.items()}
    storage = tuner.vera_A["default"].data_ptr()
    surgery.set_peft_model_state_dict(ours, state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft.set_peft_model_state_dict(theirs, state)
    assert tuner.vera_A["default"].data_ptr() == storage               # loaded in place
    ids = tm.token_batch()
    with torch.no_grad():
        assert max_diff(ours(ids).logits, theirs(ids).logits) <= 1e-5


def test_to_moves_the_projections_for_every_layer():
    ours, theirs = pair("VeraConfig", tm.tiny_llama(), **LLAMA)
    ours.double(), theirs.double()
    assert ours.base_model.vera_A["default"].dtype == torch.float64
    ids = tm.token_batch()
    with torch.no_grad():
        got = ours(ids).logits
        assert got.dtype == torch.float64 and max_diff(got, theirs(ids).logits) <= 1e-10


@pytest.mark.filterwarnings("ignore")
def test_without_saved_projections_the_key_rebuilds_them_both_ways(tmp_path):
    kwargs = dict(LLAMA, save_projection=False, projection_prng_key=99)
    ours, theirs = pair("VeraConfig", tm.tiny_llama(), **kwargs)
    assert not any(k.startswith("base_model.vera_") for k in surgery.get_peft_model_state_dict(ours))
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    in_peft = peft.PeftModel.from_pretrained(tm.tiny_llama(), str(tmp_path / "ours"))
    in_surgery = surgery.PeftModel.from_pretrained(tm.tiny_llama(), str(tmp_path / "theirs"))
    ids = tm.token_batch()
    with torch.no_grad():
        assert max_diff(in_peft(ids).logits, ours(ids).logits) <= 1e-6
        assert max_diff(in_surgery(ids).logits, theirs(ids).logits) <= 1e-6


def test_a_checkpoint_that_lacks_saved_projections_is_refused():
    ours, _ = pair("VeraConfig", tm.tiny_llama(), **LLAMA)
    state = {k: v for k, v in surgery.get_peft_model_state_dict(ours).items() if k != "base_model.vera_A"}
    with pytest.raises(CheckpointError, match="base_model.vera_A"):
        surgery.set_peft_model_state_dict(ours, state)


def test_a_second_adapter_shares_the_first_ones_tensors_as_in_peft():
    ours, theirs = pair("VeraConfig", tm.tiny_llama(), **LLAMA)
    second = dict(target_modules=["k_proj", "o_proj"], r=4)
    ours.add_adapter("other", surgery.VeraConfig(**second))
    theirs.add_adapter("other", peft.VeraConfig(**second))
    for lib_model in (ours, theirs):
        assert lib_model.base_model.vera_A["other"] is lib_model.base_model.vera_A["default"]
    saved = surgery.get_peft_model_state_dict(ours, adapter_name="other")
    assert torch.equal(saved["base_model.vera_B"], theirs.base_model.vera_B["default"])
    ours.delete_adapter("other")
    assert list(ours.base_model.vera_A.keys()) == ["default"]
    assert not any(".other" in k for k in ours.state_dict())


@pytest.mark.parametrize("change, words", [
    (dict(projection_prng_key=1), ["projection_prng_key = 1", "'default'", "projection_prng_key=0"]),
    (dict(save_projection=False), ["save_projection = False", "save_projection=True"]),
    (dict(r=2), ["r = 2", "r=4"]),
    (dict(target_modules=["up_proj"]), ["up_proj", "32 -> 64", "vera_B (32, 4)", "largest targets first"]),
])
def test_a_second_adapter_that_cannot_share_is_refused_before_any_change(change, words):
    ours, _ = pair("VeraConfig", tm.tiny_llama(), **LLAMA)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(PlanError) as info:
            ours.add_adapter("other", surgery.VeraConfig(**{**LLAMA, **change}))
    for word in words:
        assert word in str(info.value)
    assert ours.state_dict().keys() == before.keys() and list(ours.peft_config) == ["default"]


def test_apply_rules_refuses_a_method_with_shared_state():
    base, _ = stack("linear")
    with pytest.raises(PlanError, match="get_peft_model"):
        surgery.apply_rules(base, surgery.VeraConfig(target_modules=["a"], r=2))
    assert type(base.a).__name__ == "Linear" and not hasattr(base.a, "vera_lambda_b")


def test_deepcopy_keeps_one_shared_tensor():
    ours, _ = pair("VeraConfig", tm.tiny_llama(), **LLAMA)
    clone = copy.deepcopy(ours)
    perturb(clone, seed=3)
    assert all(layer.vera_A is clone.base_model.vera_A for layer in _layers(clone))
    assert clone.base_model.vera_A["default"] is not ours.base_model.vera_A["default"]


def test_saved_projections_under_a_config_that_does_not_save_them_are_ignored_as_in_peft(caplog):
    saving, _ = pair("VeraConfig", tm.tiny_llama(), **LLAMA)
    state = surgery.get_peft_model_state_dict(saving)
    assert "base_model.vera_A" in state
    rebuilt, _ = pair("VeraConfig", tm.tiny_llama(), **dict(LLAMA, save_projection=False))
    before = rebuilt.base_model.vera_A["default"].clone()
    state = {k: v.clone() + (1.0 if k.startswith("base_model.vera_") else 0.0) for k, v in state.items()}
    surgery.set_peft_model_state_dict(rebuilt, state)
    assert torch.equal(rebuilt.base_model.vera_A["default"], before)      # the key's own draw is kept
    assert "ignoring the saved copy" in caplog.text
