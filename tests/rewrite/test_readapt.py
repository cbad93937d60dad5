"""rewrite/readapt.py: changing one layer's adapter after its plan was applied, for any method (LoRA and LoHa
here): the layer rebuilt with the new parameters and the plan's Rewrite updated (parameter count equal to the
model's trainable count), or the adapter taken off (the original module back when no adapter is left), and the
refusals that leave the model as it was."""
from __future__ import annotations

import pytest
import torch

import surgery
from surgery.errors import PlanError
from surgery.rewrite.readapt import rebuild_adapter, remove_adapter
from tests.support import tiny_models as tm

Q0 = "model.layers.0.self_attn.q_proj"


def _model(config):
    return surgery.get_peft_model(tm.tiny_llama(), config)


@pytest.mark.parametrize("config, params", [
    (surgery.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), {"r": 2, "lora_alpha": 3.0, "scaling": 1.5,
                                                                   "use_dora": False}),
    (surgery.LoHaConfig(r=4, target_modules=["q_proj", "v_proj"]), {"r": 6, "alpha": 6, "scaling": 1.0,
                                                                   "cp": False}),
], ids=["lora", "loha"])
def test_a_rebuilt_adapter_has_the_new_parameters_and_the_plan_says_so(config, params):
    model = _model(config)
    plan = model.plan()
    layer = rebuild_adapter(model.get_base_model(), plan, model.peft_config["default"], Q0, params)
    assert layer is model.get_base_model().get_submodule(Q0) and layer.r["default"] == params["r"]
    assert next(rw for rw in plan.rewrites if rw.path == Q0).params == params
    assert plan.trainable_params == model.get_nb_trainable_parameters()[0]
    assert all(p.requires_grad for n, p in layer.named_parameters() if "default" in n)


def test_removing_the_only_adapter_puts_the_original_module_back_and_the_plan_forgets_it():
    model = _model(surgery.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    original = model.get_base_model().get_submodule(Q0).get_base_layer()
    remove_adapter(model.get_base_model(), model.plan(), Q0)
    assert model.get_base_model().get_submodule(Q0) is original
    assert Q0 not in model.targeted_module_names
    assert model.plan().trainable_params == model.get_nb_trainable_parameters()[0]


def test_removing_one_of_two_adapters_keeps_the_other_on_the_layer():
    model = _model(surgery.LoraConfig(r=4, target_modules=["q_proj"]))
    model.add_adapter("other", surgery.LoraConfig(r=2, target_modules=["q_proj"]))
    remove_adapter(model.get_base_model(), model.plans["other"], Q0)
    layer = model.get_base_model().get_submodule(Q0)
    assert layer.adapter_names() == ["default"] and Q0 in model.plans["default"].paths()


def test_paths_the_plan_does_not_hold_and_merged_adapters_are_refused_unchanged():
    model = _model(surgery.LoraConfig(r=4, target_modules=["q_proj"]))
    config, plan = model.peft_config["default"], model.plan()
    with pytest.raises(PlanError, match=r"'model.layers.0.mlp.down_proj' is not a module adapter 'default' rewrote"):
        remove_adapter(model.get_base_model(), plan, "model.layers.0.mlp.down_proj")
    model.merge_adapter()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlanError, match="adapter 'default' is merged; unmerge it before rebuilding it"):
        rebuild_adapter(model.get_base_model(), plan, config, Q0, {"r": 2, "lora_alpha": 8, "scaling": 4.0,
                                                                   "use_dora": False})
    with pytest.raises(PlanError, match="adapter 'default' is merged; unmerge it before removing it"):
        remove_adapter(model.get_base_model(), plan, Q0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert len(plan.rewrites) == 2
