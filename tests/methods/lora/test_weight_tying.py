"""LoRA's ensure_weight_tying against peft 0.21.2 (peft#2864): a tied embedding / head pair stays tied.

Parity on tie_word_embeddings models: PEFT's warnings (word for word), its rewrite of target_modules /
modules_to_save, the wrapped modules, print_trainable_parameters, state-dict keys, saved files (keys and
tensors), logits (1e-6) and each library loading the other's files. The tie itself is checked as math: the head's
factors are the embedding's (transposed, one storage), a modules_to_save head shares the embedding's trained copy,
and training one step keeps them equal. Merging keeps the trained head: surgery's merged model equals the adapted
one with the tie intact (peft 0.21.2 folds the tied LoRA update into the shared weight once per layer, twice in
all, so there the merged model is compared with the unmerged one, not with peft's).
"""
from __future__ import annotations

import warnings

import pytest
import torch

import surgery
from surgery.errors import ConfigError, PlanError
from tests.support import tiny_models as tm

from .option_parity import (assert_trained_parity, logits, peft, printed, quiet,
                            train_like)

TIED = lambda: tm.tiny_llama(tie_word_embeddings=True)   # noqa: E731
CASES = {   # name -> (builder, LoraConfig kwargs)
    "targets-embed": (TIED, dict(target_modules=["q_proj", "embed_tokens"], ensure_weight_tying=True)),
    "targets-head": (TIED, dict(target_modules=["q_proj", "lm_head"], ensure_weight_tying=True)),
    "targets-regex": (TIED, dict(target_modules=r".*(q_proj|lm_head)", ensure_weight_tying=True)),
    "saved-embed": (TIED, dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"], ensure_weight_tying=True)),
    "saved-head": (TIED, dict(target_modules=["q_proj"], modules_to_save=["lm_head"], ensure_weight_tying=True)),
    "gpt2-saved-head": (tm.tiny_gpt2, dict(target_modules=["c_attn"], modules_to_save=["lm_head"],
                                           ensure_weight_tying=True)),
    "tokens": (TIED, dict(target_modules=["q_proj"], trainable_token_indices=[1, 2], ensure_weight_tying=True)),
    "saved-embed-untied-kept": (TIED, dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"])),
}


def _warnings_of(fn) -> tuple:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    words = ("ensure_weight_tying", "tie_word_embeddings")
    return result, sorted({str(w.message) for w in caught if any(x in str(w.message) for x in words)})


def _models_and_warnings(builder, config):
    ours, ours_said = _warnings_of(lambda: surgery.get_peft_model(builder(), surgery.LoraConfig(**config)))
    theirs, they_said = _warnings_of(lambda: peft.get_peft_model(builder(), peft.LoraConfig(**config)))
    return ours, theirs, ours_said, they_said


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_rewrite_counts_keys_files_and_logits_equal_peft(case, tmp_path):
    builder, config = CASES[case]
    ours, theirs, ours_said, they_said = _models_and_warnings(builder, config)
    assert ours_said == they_said
    mine, their = ours.peft_config["default"], theirs.peft_config["default"]
    assert mine.target_modules == their.target_modules and mine.modules_to_save == their.modules_to_save
    assert ours.peft_config["default"].to_dict()["ensure_weight_tying"] == config.get("ensure_weight_tying", False)
    assert printed(ours) == printed(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert_trained_parity(ours, theirs, builder, tmp_path)


@pytest.mark.parametrize("builder, config, words", [
    (TIED, dict(target_modules=["q_proj", "embed_tokens"]), "but `ensure_weight_tying` is not set to True"),
    (TIED, dict(target_modules=["q_proj"], modules_to_save=["lm_head"]), "but `ensure_weight_tying` is not set"),
    (TIED, dict(target_modules=["q_proj"], ensure_weight_tying=True), "no tied modules are added in either"),
    (tm.tiny_llama, dict(target_modules=["q_proj"], ensure_weight_tying=True), "no tied modules were found"),
    (tm.tiny_llama, dict(target_modules=["q_proj"], trainable_token_indices=[1], ensure_weight_tying=True),
     "ensure_weight_tying=True but the model does not have tied weights"),
])
def test_warnings_are_peft_words(builder, config, words):
    _, _, ours_said, they_said = _models_and_warnings(builder, config)
    assert ours_said == they_said and any(words in w for w in ours_said)


def test_a_tied_head_lora_is_the_embedding_lora_transposed_and_training_keeps_it():
    ours = quiet(surgery.get_peft_model, TIED(), surgery.LoraConfig(target_modules=["embed_tokens"],
                                                                     ensure_weight_tying=True))
    inner = ours.base_model.model
    embed, head = inner.model.embed_tokens, inner.lm_head
    assert type(head).__name__ == "Linear" and head.get_base_layer().weight is embed.get_base_layer().weight
    emb_A, emb_B = embed.lora_embedding_A["default"], embed.lora_embedding_B["default"]
    head_A, head_B = head.lora_A["default"].weight, head.lora_B["default"].weight
    assert head_A.data_ptr() == emb_B.data_ptr() and head_B.data_ptr() == emb_A.data_ptr()
    assert torch.count_nonzero(emb_A) == 0   # the pair starts as the identity (dW = 0), as peft's
    optimizer = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.3)
    ours.train()
    for _ in range(2):
        optimizer.zero_grad()
        ours(tm.token_batch()).logits.square().mean().backward()
        optimizer.step()
    assert torch.count_nonzero(emb_A) > 0
    torch.testing.assert_close(head_A, emb_B.T, atol=0, rtol=0)
    torch.testing.assert_close(head_B, emb_A.T, atol=0, rtol=0)
    delta_embedding = embed.get_delta_weight("default")
    torch.testing.assert_close(head.get_delta_weight("default"), delta_embedding, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("case", ["targets-embed", "targets-head", "saved-embed", "tokens"])
def test_merging_keeps_the_trained_head_and_the_tie(case):
    builder, config = CASES[case]
    ours = quiet(surgery.get_peft_model, builder(), surgery.LoraConfig(**config))
    train_like(ours)
    adapted = logits(ours)
    embedding = ours.base_model.model.get_input_embeddings()
    base_weight = embedding.get_base_layer().weight.detach().clone()
    expected_weight = base_weight + embedding.get_delta_weight("default") if case.startswith("targets") else None
    merged = ours.merge_and_unload()
    assert merged.lm_head.weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()
    torch.testing.assert_close(logits(merged), adapted, atol=1e-5, rtol=1e-5)
    if expected_weight is not None:   # the update folded in once: W = E + dE
        torch.testing.assert_close(merged.lm_head.weight, expected_weight, atol=1e-6, rtol=1e-6)


def test_saved_heads_share_the_embedding_copy_per_adapter():
    ours = quiet(surgery.get_peft_model, TIED(), surgery.LoraConfig(target_modules=["q_proj"],
                                                                     modules_to_save=["embed_tokens"],
                                                                     ensure_weight_tying=True))
    quiet(ours.add_adapter, "other", surgery.LoraConfig(target_modules=["q_proj"], modules_to_save=["embed_tokens"],
                                                        ensure_weight_tying=True))
    inner = ours.base_model.model
    for name in ("default", "other"):
        assert inner.lm_head.modules_to_save[name].weight is inner.model.embed_tokens.modules_to_save[name].weight
    assert inner.lm_head.modules_to_save["default"].weight is not inner.lm_head.modules_to_save["other"].weight
    plan = ours.plan("other")
    assert [(m.path, m.tied_to, m.params) for m in plan.modules_to_save] == [
        ("model.embed_tokens", None, 128 * 32), ("lm_head", "model.embed_tokens", 0)]
    assert "shares model.embed_tokens's copy (tied)" in plan.table()


def test_different_ids_on_tied_modules_are_refused_in_peft_words():
    config = dict(target_modules=["q_proj"], trainable_token_indices={"lm_head": [1, 2], "embed_tokens": [3, 4]},
                  ensure_weight_tying=True)
    words = "Cannot ensure weight tying when different token indices are specified"
    model = TIED()
    with pytest.raises(ConfigError, match=words):
        quiet(surgery.get_peft_model, model, surgery.LoraConfig(**config))
    assert type(model.model.embed_tokens).__name__ == "Embedding"
    with pytest.raises(ValueError, match=words):
        quiet(peft.get_peft_model, TIED(), peft.LoraConfig(**config))


@pytest.mark.parametrize("config, words", [
    (dict(rank_pattern={"lm_head": 4}), r"their r differ \(4 vs 8"),
    (dict(use_dora=True), "ensure_weight_tying with use_dora=True"),
    (dict(init_lora_weights="pissa"), "ensure_weight_tying with init_lora_weights='pissa'"),
])
def test_a_tie_that_cannot_share_one_update_is_refused_before_anything_changes(config, words):
    model = TIED()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlanError, match=words):
        quiet(surgery.get_peft_model, model, surgery.LoraConfig(target_modules=["embed_tokens"],
                                                                ensure_weight_tying=True, **config))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [type(m).__name__ for m in (model.model.embed_tokens, model.lm_head)] == ["Embedding", "Linear"]


def test_bad_value_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="ensure_weight_tying = 'yes' has type str; expected bool"):
        surgery.LoraConfig(ensure_weight_tying="yes")


@pytest.mark.parametrize("config", [dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
                                    dict(target_modules=["q_proj", "lm_head"])])
def test_a_method_that_cannot_keep_the_tie_warns_in_peft_words(config):
    ours, ours_said = _warnings_of(lambda: surgery.get_peft_model(TIED(), surgery.LoKrConfig(**config)))
    theirs, they_said = _warnings_of(lambda: peft.get_peft_model(TIED(), peft.LoKrConfig(**config)))
    assert ours_said == they_said and any("no implementation exists to tie the adapters" in w for w in ours_said)
