"""The plan warns when targets hit an MoE router or the shared experts instead of the routed experts (the trap of
vllm#47088: names written for dense MLPs reach only the shared experts when the routed ones are fused parameters).
Method-blind: checked with LoRA and IA3. The adaptation itself stays PEFT's (same trainable counts), the warning
is an addition. Tiny transformers models built from their configs."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import (Qwen2MoeConfig, Qwen2MoeForCausalLM, SwitchTransformersConfig,
                          SwitchTransformersForConditionalGeneration)

import surgery

peft = pytest.importorskip("peft")


def _qwen2_moe():
    torch.manual_seed(0)
    return Qwen2MoeForCausalLM(Qwen2MoeConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
        shared_expert_intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        num_experts=4, num_experts_per_tok=2))


def _switch():
    torch.manual_seed(0)
    return SwitchTransformersForConditionalGeneration(SwitchTransformersConfig(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2, num_experts=4,
        encoder_sparse_step=1, decoder_sparse_step=1))


def _plan(model, config):
    return surgery.plan(model, config)


def _same_counts_as_peft(model, ours_config, peft_config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(model), peft_config)
    assert _plan(model, ours_config).trainable_params == theirs.get_nb_trainable_parameters()[0]


DENSE_NAMES = ["gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_dense_mlp_names_reaching_only_the_shared_experts_warn(method):
    model = _qwen2_moe()
    if method == "lora":
        ours, theirs = surgery.LoraConfig(target_modules=DENSE_NAMES), peft.LoraConfig(target_modules=DENSE_NAMES)
    else:
        ours = surgery.IA3Config(target_modules=DENSE_NAMES, feedforward_modules=["down_proj"])
        theirs = peft.IA3Config(target_modules=DENSE_NAMES, feedforward_modules=["down_proj"])
    plan = _plan(model, ours)
    assert {r.path.rpartition(".")[0].rpartition(".")[2] for r in plan.rewrites} == {"shared_expert"}
    (note,) = [w for w in plan.warnings if "shared experts" in w]
    assert "target_modules adapts the shared experts (model.layers.0.mlp.shared_expert.gate_proj" in note
    assert "none of the routed experts (fused 3-D parameters of model.layers.0.mlp.experts: gate_up_proj " \
           "(4x32x32), down_proj (4x32x16))" in note
    assert "vllm#47088" in note and "target_parameters=['mlp.experts.gate_up_proj', 'mlp.experts.down_proj']" in note
    assert note in plan.table()
    _same_counts_as_peft(model, ours, theirs)


def test_no_shared_expert_warning_when_the_routed_experts_are_adapted_too():
    model = _qwen2_moe()
    config = dict(target_modules=DENSE_NAMES, target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    plan = _plan(model, surgery.LoraConfig(**config))
    assert not [w for w in plan.warnings if "shared experts" in w or "router" in w]
    _same_counts_as_peft(model, surgery.LoraConfig(**config), peft.LoraConfig(**config))


def test_a_router_weight_as_parameter_target_warns():
    model = _qwen2_moe()
    config = dict(target_modules=[], target_parameters=["mlp.gate.weight"])
    plan = _plan(model, surgery.LoraConfig(**config))
    (note,) = [w for w in plan.warnings if "router" in w]
    assert note.startswith("target_parameters adapts the MoE router of 2 target(s) (model.layers.0.mlp.gate.weight, "
                           "model.layers.1.mlp.gate.weight)")
    assert "drop it from target_parameters." in note and "exclude_modules" not in note
    assert "to adapt them use target_parameters=['mlp.experts.gate_up_proj', 'mlp.experts.down_proj']" in note
    _same_counts_as_peft(model, surgery.LoraConfig(**config), peft.LoraConfig(**config))


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_a_linear_router_hit_by_target_modules_warns(method):
    model = _switch()
    names = ["classifier", "q"]
    ours = surgery.LoraConfig(target_modules=names) if method == "lora" else \
        surgery.IA3Config(target_modules=names, feedforward_modules=[])
    plan = _plan(model, ours)
    (note,) = [w for w in plan.warnings if "router" in w]
    assert note.startswith("target_modules adapts the MoE router of 4 target(s) "
                           "(encoder.block.0.layer.1.mlp.router.classifier, encoder.block.1.layer.1.mlp.router.classifier "
                           "and 2 more)")
    assert "add 'router.classifier' to exclude_modules" in note
    assert "The routed experts are the per-expert modules under encoder.block.0.layer.1.mlp.experts" in note
    if method == "lora":   # the advice works: excluded, the router keeps no adapter and the warning goes
        plan = _plan(model, surgery.LoraConfig(target_modules=names, exclude_modules=["router.classifier"]))
        assert not [w for w in plan.warnings if "router" in w] and all(".router." not in r.path for r in plan.rewrites)


def test_routed_per_expert_modules_give_no_warning():
    plan = _plan(_switch(), surgery.LoraConfig(target_modules=["wi", "wo"]))
    assert any(".mlp.experts.expert_0.wi" in r.path for r in plan.rewrites)
    assert not [w for w in plan.warnings if "router" in w or "shared experts" in w]
