"""convert_to_lora / save_as_lora: additive adapters become LoRA adapters equal to PEFT's conversion, and the
converted adapter approximates the original as the SVD says it must."""
from __future__ import annotations

import peft
import pytest
import torch

import surgery
from surgery.errors import ConfigError
from tests.support import tiny_models as tm

TARGETS = ["q_proj", "v_proj"]
METHODS = {
    "loha": (surgery.LoHaConfig, peft.LoHaConfig, dict(init_weights=False)),
    "lokr": (surgery.LoKrConfig, peft.LoKrConfig, dict(init_weights=False)),
    "vera": (surgery.VeraConfig, peft.VeraConfig, dict(init_weights=False, r=8)),
    "fourierft": (surgery.FourierFTConfig, peft.FourierFTConfig, dict(init_weights=False, n_frequency=64)),
    "lora": (surgery.LoraConfig, peft.LoraConfig, dict(init_lora_weights=False)),
}


def _pair(method):
    ours_cls, theirs_cls, kwargs = METHODS[method]
    torch.manual_seed(0)
    theirs = peft.get_peft_model(tm.tiny_llama(), theirs_cls(target_modules=TARGETS, **kwargs))
    ours = surgery.get_peft_model(tm.tiny_llama(), ours_cls(target_modules=TARGETS, **kwargs))
    surgery.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    return ours, theirs


@pytest.mark.filterwarnings("ignore:Converting a PEFT adapter to LoRA")
@pytest.mark.parametrize("rank", [4, 0.8], ids=["rank-4", "energy-0.8"])
@pytest.mark.parametrize("method", list(METHODS))
def test_conversion_equals_peft(method, rank):
    ours, theirs = _pair(method)
    assert ours.supports_lora_conversion() and theirs.supports_lora_conversion()
    config, state = surgery.convert_to_lora(ours, rank)
    their_config, their_state = peft.convert_to_lora(theirs, rank)
    assert state.keys() == their_state.keys()
    # factors are unique only up to signs and rotations within equal singular values: compare B @ A
    for key in (k.removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight")):
        ours_delta = state[f"{key}.lora_B.weight"] @ state[f"{key}.lora_A.weight"]
        their_delta = their_state[f"{key}.lora_B.weight"] @ their_state[f"{key}.lora_A.weight"]
        torch.testing.assert_close(ours_delta, their_delta, atol=5e-5, rtol=1e-4)   # FourierFT: FFT rounding
    assert config.rank_pattern == their_config.rank_pattern and config.r == their_config.r
    assert set(config.target_modules) == set(their_config.target_modules)


def test_full_rank_conversion_reproduces_the_adapter_and_low_rank_follows_eckart_young():
    ours, _ = _pair("loha")
    ids = tm.token_batch()
    with torch.no_grad():
        expected = ours(input_ids=ids).logits
    config, state = surgery.convert_to_lora(ours, 1.0)   # all the energy: every singular value, exact
    lora = surgery.get_peft_model(tm.tiny_llama(), config)
    result = surgery.set_peft_model_state_dict(lora, state)
    assert not result.unexpected_keys
    with torch.no_grad():
        torch.testing.assert_close(lora(input_ids=ids).logits, expected, atol=1e-4, rtol=0)
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    delta = layer.get_delta_weight("default")
    _, state2 = surgery.convert_to_lora(ours, 2)
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    approx = state2[f"{key}.lora_B.weight"] @ state2[f"{key}.lora_A.weight"]
    singular = torch.linalg.svdvals(delta)
    torch.testing.assert_close((delta - approx).norm(), singular[2:].norm(), atol=1e-4, rtol=1e-4)


def test_save_as_lora_writes_an_adapter_peft_loads(tmp_path):
    ours, _ = _pair("lokr")
    surgery.save_as_lora(tmp_path, ours, rank=8)
    loaded = peft.PeftModel.from_pretrained(tm.tiny_llama(), str(tmp_path))
    again = surgery.PeftModel.from_pretrained(tm.tiny_llama(), str(tmp_path))
    ids = tm.token_batch()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_methods_that_cannot_convert_say_so():
    ia3 = surgery.get_peft_model(tm.tiny_llama(), surgery.IA3Config(target_modules=["q_proj"], feedforward_modules=[]))
    assert not ia3.supports_lora_conversion()
    with pytest.raises(TypeError, match="do not support LoRA conversion"):
        surgery.convert_to_lora(ia3, 4)
    prompt = surgery.get_peft_model(tm.tiny_llama(), surgery.PromptTuningConfig(task_type="CAUSAL_LM",
                                                                                num_virtual_tokens=4))
    assert prompt.supports_lora_conversion() is False


@pytest.mark.parametrize("rank, error", [(0, ValueError), (1.5, ValueError), (-2, ValueError), ("4", ConfigError),
                                         (True, ConfigError), (64, ConfigError)])
def test_bad_ranks_are_refused(rank, error):
    ours, _ = _pair("loha")
    with pytest.raises(error):
        surgery.convert_to_lora(ours, rank)
