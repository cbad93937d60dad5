"""Layer and model status fields that PEFT's users (and its tests) read: module types, irregular states."""
import peft
import torch
from torch import nn

import surgery
from tests.support import tiny_models


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1d = nn.Conv1d(3, 4, 3)
        self.conv2d = nn.Conv2d(3, 4, 3)
        self.conv3d = nn.Conv3d(3, 4, 1)
        self.lin = nn.Linear(4, 4)


def test_module_types_are_peft_s_per_dimension_names():
    # IA3: no Conv1d, and printed without a method prefix ("Conv2d("), as PEFT
    for method, dims, prefix in (("LoraConfig", (1, 2, 3), "lora."), ("IA3Config", (2, 3), "")):
        extra = {"feedforward_modules": []} if method == "IA3Config" else {}
        statuses = []
        for lib in (surgery, peft):
            torch.manual_seed(0)
            model = lib.get_peft_model(ConvNet(), getattr(lib, method)(
                target_modules=[f"conv{d}d" for d in dims] + ["lin"], **extra))
            statuses.append(sorted(s.module_type for s in model.get_layer_status()))
        assert statuses[0] == statuses[1], method
        assert statuses[0][:len(dims)] == [f"{prefix}Conv{d}d" for d in dims]


def test_one_layer_switched_by_hand_makes_the_model_irregular():
    config = dict(r=4, target_modules=["q_proj", "v_proj"])
    models = []
    for lib in (surgery, peft):
        model = lib.get_peft_model(tiny_models.tiny_llama(), lib.LoraConfig(**config))
        model.add_adapter("other", lib.LoraConfig(**config))
        layer = model.base_model.model.model.layers[0].self_attn.q_proj
        layer._active_adapter = "other"   # PEFT's attribute, set directly by user code and tests
        assert layer.active_adapters == ["other"]
        models.append(model)
    assert models[0].get_model_status().active_adapters == models[1].get_model_status().active_adapters \
        == "irregular"


def test_get_model_config_as_peft():
    llama = tiny_models.tiny_llama()
    assert surgery.LoraModel.get_model_config(llama) == peft.LoraModel.get_model_config(llama)
    assert surgery.LoraModel.get_model_config(nn.Linear(2, 2)) == peft.LoraModel.get_model_config(nn.Linear(2, 2)) \
        == {"model_type": "custom"}
