"""Weight ties in the planner and the rewriter (plan/ties.py), for a spec with follows_ties (trainable tokens is
the one such method today): modules sharing a weight with a target follow its layer.

The plan lists each follower after every leader, with params["tied_to"] = the leader's path and no parameters
of its own; a target tied to an earlier target follows it; a second adapter finds the followers through the
layers the first one made; a method without follows_ties still only warns that merging splits the tie.
"""
from __future__ import annotations

import pytest

import surgery
from surgery.plan.model import Plan
from surgery.plan.ties import TIED_TO, followers
from surgery.graph.walk import module_graph
from tests.support import tiny_models as tm

TOKENS = surgery.TrainableTokensConfig(token_indices=[1, 2])


def test_followers_come_after_their_leader_with_its_path_and_no_parameters():
    plan = surgery.plan(tm.tiny_t5(), TOKENS)
    assert [(r.path, r.params.get(TIED_TO)) for r in plan.rewrites] == [
        ("shared", None), ("encoder.embed_tokens", "shared"), ("decoder.embed_tokens", "shared"),
        ("lm_head", "shared")]
    assert [r.added_params for r in plan.rewrites] == [64, 0, 0, 0]
    assert plan.warnings == []
    assert Plan.from_json(plan.to_json()).rewrites == plan.rewrites


def test_a_target_tied_to_an_earlier_target_follows_it():
    model = tm.tiny_llama(tie_word_embeddings=True)
    plan = surgery.plan(model, surgery.TrainableTokensConfig(token_indices=[1], target_modules=["embed_tokens",
                                                                                                "lm_head"]))
    assert [(r.path, r.params.get(TIED_TO)) for r in plan.rewrites] == [("model.embed_tokens", None),
                                                                        ("lm_head", "model.embed_tokens")]


def test_untied_modules_have_no_followers():
    graph = module_graph(tm.tiny_llama())
    assert followers(graph, ["model.embed_tokens", "lm_head"]) == {}
    assert surgery.plan(tm.tiny_llama(), TOKENS).paths() == ["model.embed_tokens"]


def test_the_rewriter_gives_each_follower_its_leader_s_layer():
    model = surgery.get_peft_model(tm.tiny_gpt2(), TOKENS)
    base = model.get_base_model()
    assert base.lm_head.trainable_tokens_delta is base.transformer.wte.trainable_tokens_delta
    assert base.lm_head.follows == ["default"] and base.transformer.wte.follows is None


def test_a_second_adapter_finds_the_followers_through_the_first_adapter_s_layers():
    model = surgery.get_peft_model(tm.tiny_gpt2(), TOKENS)
    plan = surgery.plan(model.get_base_model(), TOKENS, adapter_name="other")
    assert [(r.path, r.action, r.params.get(TIED_TO)) for r in plan.rewrites] == [
        ("transformer.wte", "add", None), ("lm_head", "add", "transformer.wte")]


def test_a_method_without_follows_ties_still_warns_that_merging_splits_the_tie():
    plan = surgery.plan(tm.tiny_gpt2(), surgery.LoraConfig(target_modules=["wte"]))
    assert plan.paths() == ["transformer.wte"]
    assert any("shares its weight with lm_head" in w for w in plan.warnings)


def test_a_failed_apply_leaves_the_leader_without_the_adapter(monkeypatch):
    model = surgery.get_peft_model(tm.tiny_gpt2(), TOKENS)
    layer = type(model.get_base_model().lm_head)

    def broken(self, *args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(layer, "_follow", broken)
    with pytest.raises(surgery.SurgeryError, match="boom"):
        model.add_adapter("other", TOKENS)
    wte = model.get_base_model().transformer.wte
    assert wte.adapter_names() == ["default"] and list(wte.trainable_tokens_delta) == ["default"]
