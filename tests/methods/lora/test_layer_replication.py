"""LoRA's layer_replication against peft 0.21.2 (replicate_layers): decoder layers stacked by [start, end) ranges,
sharing the base weights, with a separate LoRA on every replica.

Parity (surgery vs peft on identical tiny models, "trained" alike): the layer count and config.num_hidden_layers,
which replicas share storage, print_trainable_parameters, state-dict keys, saved files, logits (1e-6), greedy
generation (the renumbered layer_idx keeps the KV cache right), and each library loading the other's files.
Plan first: the plan shows the replication and the model is untouched until it is applied. Merging is refused
where replicas share a base weight (their updates cannot all live in it); a replication without shared sources
merges as peft does.
"""
from __future__ import annotations

import pytest
import torch

import surgery
from surgery.errors import ConfigError, MergeError, PlanError
from tests.support import tiny_models as tm

from .option_parity import (INPUTS, TOL, assert_same_files, copy_state, cross_loaded, logits, pair, peft, printed,
                            quiet, train_like)

LLAMA3 = lambda: tm.tiny_llama(num_hidden_layers=3)   # noqa: E731
CASES = {   # name -> (builder, LoraConfig kwargs, where the layers are)
    "llama-overlap": (LLAMA3, dict(target_modules=["q_proj", "down_proj"], layer_replication=[[0, 2], [1, 3]]),
                      "model.layers"),
    "llama-peft-suite": (tm.tiny_llama, dict(target_modules=["down_proj", "up_proj"],
                                             layer_replication=[[0, 1], [0, 2], [1, 2]]), "model.layers"),
    "llama-permuted": (LLAMA3, dict(target_modules=["q_proj"], layer_replication=[[2, 3], [0, 2]]), "model.layers"),
    "bert": (lambda: tm.tiny_bert(num_hidden_layers=3), dict(target_modules=["query", "value"],
                                                             layer_replication=[[0, 3], [1, 2]]), "encoder.layer"),
}


def _output(model, where):
    model.eval()
    with torch.no_grad():
        out = model(INPUTS)
    return out.last_hidden_state if where == "encoder.layer" else out.logits


def _layers(model, where):
    return model.get_base_model().get_submodule(where)


@pytest.mark.parametrize("case", sorted(CASES))
def test_structure_counts_keys_logits_and_files_equal_peft(case, tmp_path):
    builder, config, where = CASES[case]
    ours, theirs = pair(builder, **config)
    sources = [i for start, end in config["layer_replication"] for i in range(start, end)]
    assert len(_layers(ours, where)) == len(_layers(theirs, where)) == len(sources)
    assert ours.get_base_model().config.num_hidden_layers == theirs.get_base_model().config.num_hidden_layers
    assert printed(ours) == printed(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert sorted(surgery.get_peft_model_state_dict(ours)) == sorted(peft.get_peft_model_state_dict(theirs))
    train_like(ours)
    copy_state(ours, theirs)
    torch.testing.assert_close(_output(ours, where), _output(theirs, where), atol=TOL, rtol=TOL)
    if where == "model.layers":
        assert_same_files(ours, theirs, tmp_path)
        ours_loaded, theirs_loaded = cross_loaded(ours, theirs, builder, tmp_path)
        torch.testing.assert_close(logits(ours_loaded), logits(theirs), atol=TOL, rtol=TOL)
        torch.testing.assert_close(logits(theirs_loaded), logits(ours), atol=TOL, rtol=TOL)


def test_replicas_share_base_weights_not_adapters_as_in_peft():
    builder, config, where = CASES["llama-peft-suite"]   # peft's own test: [[0, 1], [0, 2], [1, 2]] on 2 layers
    ours, theirs = pair(builder, **config)
    for model in (ours, theirs):
        layers = _layers(model, where)
        ptr = [layer.mlp.up_proj.base_layer.weight.data_ptr() for layer in layers]
        assert ptr[0] == ptr[1] and ptr[2] == ptr[3] and ptr[0] != ptr[2]
        lora = [layer.mlp.up_proj.lora_A["default"].weight.data_ptr() for layer in layers]
        assert len(set(lora)) == 4
        assert len([n for n, _ in model.named_parameters() if ".lora_A." in n]) == 8
        assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2, 3]


def test_generation_equals_peft():
    builder, config, _ = CASES["llama-overlap"]
    ours, theirs = pair(builder, **config)
    train_like(ours)
    copy_state(ours, theirs)
    prompt = INPUTS[:1, :4]
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(ours.generate(input_ids=prompt, **kwargs), theirs.generate(input_ids=prompt, **kwargs))


def test_the_plan_shows_the_replication_and_changes_nothing():
    model = LLAMA3()
    layers = model.model.layers
    config = surgery.LoraConfig(target_modules=["q_proj"], layer_replication=[[0, 2], [1, 3]])
    plan = surgery.plan(model, config)
    assert model.model.layers is layers and len(layers) == 3 and model.config.num_hidden_layers == 3
    assert plan.structure[0]["sources"] == [0, 1, 1, 2] and plan.structure[0]["path"] == "model.layers"
    assert [rw.path for rw in plan.rewrites] == [f"model.layers.{i}.self_attn.q_proj" for i in range(4)]
    assert "structure: layer_replication [[0, 2], [1, 3]]: model.layers 3 -> 4 layers (sources 0,1,1,2)" in plan.table()
    theirs = quiet(peft.get_peft_model, LLAMA3(), peft.LoraConfig(target_modules=["q_proj"],
                                                                   layer_replication=[[0, 2], [1, 3]]))
    assert plan.totals_line() == printed(theirs)
    assert surgery.Plan.from_json(plan.to_json()).structure == plan.structure


def test_merging_shared_replicas_is_refused_and_changes_nothing():
    builder, config, _ = CASES["llama-overlap"]
    ours = quiet(surgery.get_peft_model, builder(), surgery.LoraConfig(**config))
    train_like(ours)
    before = logits(ours)
    with pytest.raises(MergeError, match="Cannot merge LORA layers when base model layers are replicated: "
                                         "model.layers.1.self_attn.q_proj shares its base weight"):
        ours.merge_and_unload()
    with pytest.raises(MergeError, match="replicated"):
        ours.merge_adapter(safe_merge=True)
    torch.testing.assert_close(logits(ours), before, atol=0, rtol=0)
    assert not any(layer.merged_adapters for _, layer in surgery.rewrite.trainable.adapter_layers(ours))
    unloaded = ours.unload()
    assert len(unloaded.model.layers) == 4   # unload keeps the replicated structure, as peft


def test_a_replication_without_shared_sources_merges_as_peft():
    builder, config, _ = CASES["llama-permuted"]
    ours, theirs = pair(builder, **config)
    train_like(ours)
    copy_state(ours, theirs)
    adapted = logits(ours)
    merged, merged_peft = ours.merge_and_unload(), quiet(theirs.merge_and_unload)
    torch.testing.assert_close(logits(merged), logits(merged_peft), atol=TOL, rtol=TOL)
    torch.testing.assert_close(logits(merged), adapted, atol=1e-5, rtol=1e-5)


def test_a_second_adapter_adapts_the_replicas_without_replicating_again():
    builder, config, _ = CASES["llama-overlap"]
    ours = quiet(surgery.get_peft_model, builder(), surgery.LoraConfig(**config))
    quiet(ours.add_adapter, "other", surgery.LoraConfig(**config))
    layers = ours.get_base_model().model.layers
    assert len(layers) == 4 and all("other" in layer.self_attn.q_proj.lora_A for layer in layers)
    with pytest.raises(PlanError, match=r"already replicated by another adapter with \[\[0, 2\], \[1, 3\]\]"):
        ours.add_adapter("third", surgery.LoraConfig(target_modules=["q_proj"], layer_replication=[[0, 3]]))
    assert "third" not in ours.peft_config and len(layers) == 4


@pytest.mark.parametrize("value, words", [
    ([[0, 4]], r"range \[0, 4\) reaches past the model's 3 layers \(model.layers\); ranges must lie within \[0, 3\]"),
])
def test_ranges_past_the_layers_are_refused_before_anything_changes(value, words):
    model = LLAMA3()
    layers = model.model.layers
    with pytest.raises(ConfigError, match=words):
        surgery.get_peft_model(model, surgery.LoraConfig(target_modules=["q_proj"], layer_replication=value))
    assert model.model.layers is layers and model.config.num_hidden_layers == 3
    assert type(layers[0].self_attn.q_proj).__name__ == "Linear"


@pytest.mark.parametrize("value, words", [
    ([[2, 1]], r"range \[2, 1\] is empty or negative; each range \[start, end\) needs 0 <= start < end"),
    ([[1, 1]], r"range \[1, 1\] is empty or negative"),
    ([[-1, 2]], r"range \[-1, 2\] is empty or negative"),
    ([[0, 1, 2]], r"entry \[0, 1, 2\] is not a \[start, end\) pair of layer indices"),
    ([[0, True]], r"entry \[0, True\] is not a \[start, end\) pair"),
    ([0, 2], r"entry 0 is not a \[start, end\) pair"),
    ("0-2", r"layer_replication = '0-2': expected a list of \[start, end\) layer ranges"),
])
def test_malformed_ranges_are_refused_by_the_config(value, words):
    with pytest.raises(ConfigError, match=words):
        surgery.LoraConfig(target_modules=["q_proj"], layer_replication=value)


def test_an_architecture_without_a_layer_list_is_refused_in_peft_words():
    words = "Could not locate the layers attribute in the model"
    model = tm.tiny_gpt2()   # GPT-2's blocks are transformer.h: not where peft looks
    with pytest.raises(PlanError, match=words):
        surgery.get_peft_model(model, surgery.LoraConfig(target_modules=["c_attn"], layer_replication=[[0, 2]]))
    assert len(model.transformer.h) == 2
    with pytest.raises(ValueError, match=words):
        quiet(peft.get_peft_model, tm.tiny_gpt2(), peft.LoraConfig(target_modules=["c_attn"],
                                                                    layer_replication=[[0, 2]]))


def test_an_empty_map_replicates_nothing_as_in_peft():
    ours, theirs = pair(LLAMA3, target_modules=["q_proj"], layer_replication=[])
    assert len(ours.get_base_model().model.layers) == len(theirs.get_base_model().model.layers) == 3
    assert printed(ours) == printed(theirs)
