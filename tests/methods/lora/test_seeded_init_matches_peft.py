"""One seed, one adapter: LoRA's initial factors equal PEFT's when torch's generator starts in the same state.

PEFT builds each factor as a torch layer on the CPU (its default init draws), then draws A again; surgery creates
the factors uninitialised and makes the same draws (init.py), so runs seeded alike start alike (TRL's parity tests
depend on it). Exact equality: the same generator calls in the same order give the same bits.
"""
from __future__ import annotations

import peft
import pytest
import torch
from torch import nn

import surgery
from tests.support import tiny_models


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.c = nn.Conv2d(3, 8, 3)
        self.c1 = nn.Conv1d(8, 8, 1)
        self.l = nn.Linear(8, 4)

    def forward(self, x):
        h = self.c(x).mean(-1)
        return self.l(self.c1(h).mean(-1))


CASES = {
    "llama q,v": (tiny_models.tiny_llama, dict(target_modules=["q_proj", "v_proj"])),
    "llama all-linear gaussian": (tiny_models.tiny_llama, dict(target_modules="all-linear", init_lora_weights="gaussian")),
    "llama no-op init": (tiny_models.tiny_llama, dict(target_modules=["q_proj", "o_proj"], init_lora_weights=False)),
    "llama lora_bias": (tiny_models.tiny_llama, dict(target_modules=["q_proj"], lora_bias=True)),
    "llama embedding": (tiny_models.tiny_llama, dict(target_modules=["embed_tokens", "q_proj"])),
    "llama embedding no-op": (tiny_models.tiny_llama, dict(target_modules=["embed_tokens"], init_lora_weights=False)),
    "gpt2 Conv1D": (tiny_models.tiny_gpt2, dict(target_modules=["c_attn", "c_fc"])),
    "convs": (ConvNet, dict(target_modules=["c", "c1", "l"])),
    "convs dora": (ConvNet, dict(target_modules=["c", "l"], use_dora=True)),
    "convs no-op init with bias": (ConvNet, dict(target_modules=["c", "l"], init_lora_weights=False, lora_bias=True)),
}


@pytest.mark.parametrize("case", CASES)
def test_same_seed_same_initial_adapter_and_same_generator_state_after(case):
    build, options = CASES[case]
    torch.manual_seed(0)
    theirs = peft.get_peft_model(build(), peft.LoraConfig(**options))
    after_theirs = torch.rand(4)
    torch.manual_seed(0)
    ours = surgery.get_peft_model(build(), surgery.LoraConfig(**options))
    after_ours = torch.rand(4)
    a, b = peft.get_peft_model_state_dict(theirs), surgery.get_peft_model_state_dict(ours)
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(after_ours, after_theirs, rtol=0, atol=0)   # the same number of draws too
    if options.get("init_lora_weights", True) is not False:
        assert all(not v.any() for k, v in b.items() if "lora_B" in k or "lora_embedding_A" in k)


def test_factors_on_another_dtype_are_drawn_in_float32_then_cast_as_peft():
    torch.manual_seed(0)
    theirs = peft.get_peft_model(tiny_models.tiny_llama().to(torch.bfloat16), peft.LoraConfig(
        target_modules=["q_proj"]), autocast_adapter_dtype=False)
    torch.manual_seed(0)
    ours = surgery.get_peft_model(tiny_models.tiny_llama().to(torch.bfloat16), surgery.LoraConfig(
        target_modules=["q_proj"]), autocast_adapter_dtype=False)
    a, b = peft.get_peft_model_state_dict(theirs), surgery.get_peft_model_state_dict(ours)
    for key in a:
        assert b[key].dtype == a[key].dtype == torch.bfloat16
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
