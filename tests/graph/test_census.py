"""graph.census.parameter_total (the remembered count) equals the plain count over model.parameters() through
every change adapters make: adds, deletes in the middle, a name re-added with another rank, tied factors and
tied modules_to_save copies (shared parameters counted once), lazily created containers, wrappers; and each
plan's base_params is the model's exact count before that adapter."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import surgery
from surgery.graph.census import forget, parameter_total
from surgery.quantized import stored_numel
from tests.support import tiny_models as tm


def plain_count(model: nn.Module) -> int:
    return sum(stored_numel(p) for p in model.parameters())


TIED = lambda: tm.tiny_llama(tie_word_embeddings=True)   # noqa: E731
CASES = {   # name -> (builder, LoraConfig kwargs for every adapter)
    "q,v": (tm.tiny_llama, dict(r=2, target_modules=["q_proj", "v_proj"])),
    "dora + embedding": (tm.tiny_llama, dict(r=2, target_modules=["q_proj", "embed_tokens"], use_dora=True)),
    "modules_to_save": (tm.tiny_llama, dict(r=2, target_modules=["v_proj"], modules_to_save=["lm_head"])),
    "tied factors": (TIED, dict(r=2, target_modules=["q_proj", "embed_tokens"], ensure_weight_tying=True)),
    "tied copies": (TIED, dict(r=2, target_modules=["q_proj"], modules_to_save=["embed_tokens"],
                               ensure_weight_tying=True)),
    "trainable tokens": (tm.tiny_llama, dict(r=2, target_modules=["q_proj"], trainable_token_indices=[1, 2])),
    "gpt2 all-linear": (tm.tiny_gpt2, dict(r=2, target_modules="all-linear")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_remembered_count_is_the_plain_count(case):
    builder, kwargs = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = surgery.get_peft_model(builder(), surgery.LoraConfig(**kwargs))
        inner = model.get_base_model()
        assert parameter_total(inner) == plain_count(inner)
        for i in range(6):
            before = plain_count(inner)
            model.add_adapter(f"a{i}", surgery.LoraConfig(**kwargs))
            assert model.plan(f"a{i}").base_params == before   # the planner's count, before the rewrite
            assert parameter_total(inner) == plain_count(inner) > before
        model.delete_adapter("a2")   # from the middle of every container
        assert parameter_total(inner) == plain_count(inner)
        model.add_adapter("a2", surgery.LoraConfig(**{**kwargs, "r": 3}))   # the name again, another size
        assert parameter_total(inner) == plain_count(inner)
        model.delete_adapter("a5")   # the last entries
        model.add_adapter("a6", surgery.LoraConfig(**kwargs))
        assert model.plan("a6").base_params + model.plan("a6").added_params == plain_count(inner)


def test_layers_wrapped_and_unwrapped_between_counts():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(r=2, target_modules=["q_proj"]))
    inner = model.get_base_model()
    parameter_total(inner)
    model.add_adapter("mlp", surgery.LoraConfig(r=2, target_modules=["down_proj"]))   # new layers, new containers
    assert parameter_total(inner) == plain_count(inner)
    model.delete_adapter("mlp")   # its layers are unwrapped: their containers are gone
    assert parameter_total(inner) == plain_count(inner)


def test_a_parameter_replaced_by_one_of_the_same_size_keeps_the_count():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(r=2, target_modules=["q_proj"]))
    for i in range(3):
        model.add_adapter(f"a{i}", surgery.LoraConfig(r=2, target_modules=["q_proj"]))
    inner = model.get_base_model()
    parameter_total(inner)
    for layer in (m for m in inner.modules() if hasattr(m, "lora_A")):   # a dtype cast: new parameter objects
        layer.lora_A["a1"].weight = nn.Parameter(layer.lora_A["a1"].weight.detach().double())
    model.add_adapter("a3", surgery.LoraConfig(r=2, target_modules=["q_proj"]))
    assert parameter_total(inner) == plain_count(inner)


def test_forget_recounts_after_a_resize_in_place():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(r=2, target_modules=["q_proj"]))
    model.add_adapter("a0", surgery.LoraConfig(r=2, target_modules=["q_proj"]))
    inner = model.get_base_model()
    parameter_total(inner)
    layer = next(m for m in inner.modules() if hasattr(m, "lora_A"))
    layer.lora_A["default"].weight = nn.Parameter(torch.zeros(8, layer.in_features))   # rank 2 -> 8, in place
    forget(inner)
    assert parameter_total(inner) == plain_count(inner)
