"""The module graph's facts and the injection fast paths agree with the slow, obvious computations."""
from __future__ import annotations

import pytest
from torch import nn

import surgery
from tests.support import tiny_models as tm
from surgery.facade.training import _checkpointing_flag_set
from surgery.graph.walk import all_modules, iter_modules, layer_index, module_graph
from surgery.plan.planner import count_params

BUILDERS = [tm.tiny_llama, tm.tiny_gpt2, tm.tiny_bert, tm.tiny_t5, tm.tiny_convnet, tm.tiny_embed_mlp]


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_graph_facts_equal_a_direct_computation(builder):
    model = builder()
    graph = module_graph(model)
    assert list(graph.nodes) == [name for name, _ in model.named_modules(remove_duplicate=False)]
    for name in graph.nodes:
        node = graph.nodes[name]
        module = model.get_submodule(name)
        assert node["module"] is module and node["type"] == type(module).__name__
        assert node["layer_index"] == (layer_index(name) if name else None)   # the inherited index is exact
        assert node["params"] == sum(p.numel() for p in module.parameters(recurse=False))
    # every parameter once, tied ones (GPT-2's lm_head / wte, T5's shared embeddings) counted once
    assert graph.graph["param_count"] == sum(p.numel() for p in model.parameters())


def test_param_count_falls_back_to_the_model_once_adapter_layers_hide_parameters():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"], r=2))
    inner = model.base_model.model
    graph = module_graph(inner)
    assert graph.graph["param_count"] is None
    assert count_params(inner, graph) == sum(p.numel() for p in inner.parameters())


def test_all_modules_is_modules_in_any_order_each_once():
    model = surgery.get_peft_model(tm.tiny_gpt2(), surgery.LoraConfig(target_modules="all-linear", r=2,
                                                                      use_dora=True))
    fast = list(all_modules(model))
    assert len(fast) == len({id(m) for m in fast})
    assert {id(m) for m in fast} == {id(m) for m in model.modules()}


@pytest.mark.parametrize("builder", [tm.tiny_llama, tm.tiny_gpt2, tm.tiny_bert, tm.tiny_t5], ids=lambda b: b.__name__)
def test_checkpointing_flag_equals_transformers_property(builder):
    model = builder()
    assert _checkpointing_flag_set(model) is False is model.is_activation_checkpointing
    model.activation_checkpointing_enable()
    assert _checkpointing_flag_set(model) is True is model.is_activation_checkpointing
    model.activation_checkpointing_disable()
    assert _checkpointing_flag_set(model) is model.is_activation_checkpointing


def test_lazy_containers_appear_on_first_use_and_persist():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"], r=2))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert "lora_magnitude_vector" not in layer._modules     # never needed: never built
    holder = layer.lora_magnitude_vector                     # PEFT's attribute still reads as a ModuleDict
    assert isinstance(holder, nn.ModuleDict) and len(holder) == 0
    assert layer.lora_magnitude_vector is holder and "lora_magnitude_vector" in layer._modules
    assert isinstance(layer.lora_embedding_A, nn.ParameterDict)
    keys_before = set(model.state_dict())
    model.add_adapter("second", surgery.LoraConfig(target_modules=["q_proj"], r=2, use_dora=True))
    assert "second" in layer.lora_magnitude_vector and layer.adapter_names() == ["default", "second"]
    assert keys_before < set(model.state_dict())


def test_iter_modules_does_not_enter_adapter_layers():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"], r=2))
    names = [name for name, _ in iter_modules(model)]
    assert any(n.endswith("q_proj") for n in names)
    assert not any(".q_proj." in n for n in names)
    assert len(names) < len(list(model.modules()))
