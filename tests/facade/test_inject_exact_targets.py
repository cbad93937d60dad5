"""inject_adapter_in_model as PEFT: with state_dict= exactly the modules its keys name are adapted (not every
module whose path ends the same way), and a second injection adds to the model's configs instead of replacing."""
from __future__ import annotations

import peft
import pytest
from torch import nn

import surgery


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Module() for _ in range(2))
        for block in self.blocks:
            block.proj_out = nn.Linear(4, 4)
        self.proj_out = nn.Linear(4, 4)


def _adapted(model) -> list[str]:
    return sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A"))


@pytest.mark.parametrize("named", [["proj_out"], ["blocks.1.proj_out"], ["proj_out", "blocks.0.proj_out"]])
def test_state_dict_targets_exactly_the_named_paths(named):
    source = peft.inject_adapter_in_model(peft.LoraConfig(target_modules=["proj_out"]), Nested())
    state = {k: v for k, v in peft.get_peft_model_state_dict(source).items()
             if k.rsplit(".lora_", 1)[0] in named}
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(target_modules=["unused"]), Nested(), state_dict=state)
    ours = surgery.inject_adapter_in_model(surgery.LoraConfig(target_modules=["unused"]), Nested(), state_dict=state)
    assert _adapted(ours) == _adapted(theirs) == sorted(named)


def test_a_second_injection_keeps_the_first_adapters_config():
    model = surgery.inject_adapter_in_model(surgery.LoraConfig(target_modules=["proj_out"]), Nested(),
                                            adapter_name="one")
    model = surgery.inject_adapter_in_model(surgery.LoraConfig(target_modules=["proj_out"], r=4), model,
                                            adapter_name="two")
    assert list(model.peft_config) == ["one", "two"]
    assert model.peft_config["two"].r == 4
    one = surgery.get_peft_model_state_dict(model, adapter_name="one")
    assert len(one) == 6 and all(".lora_" in k for k in one)
