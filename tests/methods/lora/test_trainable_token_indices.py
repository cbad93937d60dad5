"""LoRA's trainable_token_indices against peft 0.21.2: chosen embedding rows trained beside LoRA.

Parity (surgery vs peft on identical tiny models, "trained" alike): the wrapped modules, the
print_trainable_parameters line, every state-dict key, the saved file (keys and tensors), logits (1e-6),
each library loading the other's files, and merge_and_unload. Math: the rows the forward uses are the deltas,
the others the base rows; a tied head (tie_word_embeddings) follows the embedding's rows. Bad values are
refused before anything changes, with messages naming the field, the value and what is valid.
"""
from __future__ import annotations

import copy

import pytest
import torch

import surgery
from surgery.errors import ConfigError, ConfigTypeError, TargetNotFoundError
from surgery.methods.trainable_tokens.wrapper import TrainableTokensWrapper
from tests.support import tiny_models as tm

from .option_parity import (INPUTS, TOL, assert_same_files, assert_trained_parity, copy_state, logits, pair, peft,
                            printed, quiet, train_like)

TIED = lambda: tm.tiny_llama(tie_word_embeddings=True)   # noqa: E731
CASES = {   # name -> (builder, LoraConfig kwargs)
    "llama-list": (tm.tiny_llama, dict(target_modules=["q_proj"], trainable_token_indices=[3, 5, 7])),
    "llama-tied-list": (TIED, dict(target_modules=["q_proj"], trainable_token_indices=[3, 5, 7])),
    "gpt2-tied-list": (tm.tiny_gpt2, dict(target_modules=["c_attn"], trainable_token_indices=[3, 5, 7])),
    "llama-dict-embed-and-head": (tm.tiny_llama, dict(target_modules=["q_proj"],
                                                      trainable_token_indices={"embed_tokens": [1, 2],
                                                                               "lm_head": [3, 4]})),
    "llama-tied-dict-same-ids": (TIED, dict(target_modules=["q_proj"],
                                            trainable_token_indices={"embed_tokens": [1, 2], "lm_head": [1, 2]})),
    "llama-tied-dict-other-ids": (TIED, dict(target_modules=["q_proj"],
                                             trainable_token_indices={"embed_tokens": [1, 2], "lm_head": [3, 4]})),
    "llama-all-linear": (tm.tiny_llama, dict(target_modules="all-linear",
                                             trainable_token_indices={"embed_tokens": [0, 1, 3]})),
}


def _wrapped(model) -> dict[str, tuple]:
    """{path: (rows delta shape or None, ids)} of every TrainableTokensWrapper (peft's or ours)."""
    out = {}
    for name, module in model.named_modules():
        if type(module).__name__ == "TrainableTokensWrapper":
            layer = module.token_adapter
            out[name] = tuple(layer.token_indices.get("default", ()))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_structure_counts_keys_logits_files_and_merge_equal_peft(case, tmp_path):
    builder, config = CASES[case]
    ours, theirs = pair(builder, **config)
    assert _wrapped(ours) == _wrapped(theirs) != {}
    assert printed(ours) == printed(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert sorted(surgery.get_peft_model_state_dict(ours)) == sorted(peft.get_peft_model_state_dict(theirs))
    assert_trained_parity(ours, theirs, builder, tmp_path)
    merged, merged_peft = ours.merge_and_unload(), quiet(theirs.merge_and_unload)
    assert not any(isinstance(m, TrainableTokensWrapper) for m in merged.modules())
    torch.testing.assert_close(logits(merged), logits(merged_peft), atol=TOL, rtol=TOL)
    tied = merged_peft.lm_head.weight.data_ptr() == merged_peft.get_input_embeddings().weight.data_ptr()
    assert (merged.lm_head.weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()) == tied


def test_only_the_rows_are_saved_under_peft_keys(tmp_path):
    ours, theirs = pair(TIED, target_modules="all-linear", trainable_token_indices={"embed_tokens": [0, 1, 3]})
    keys = [k for k in surgery.get_peft_model_state_dict(ours) if "lora" not in k]
    assert keys == ["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
    assert keys == [k for k in peft.get_peft_model_state_dict(theirs) if "lora" not in k]
    assert not [k for k in ours.state_dict() if ".original_module." in k]
    assert ours.base_model.model.model.embed_tokens.original_module is ours.base_model.model.model.embed_tokens \
        .token_adapter.base_layer


def test_embedding_rows_are_the_deltas_and_the_tied_head_follows_them():
    ours = quiet(surgery.get_peft_model, TIED(), surgery.LoraConfig(target_modules=["q_proj"],
                                                                     trainable_token_indices=[1, 4]))
    train_like(ours)
    inner = ours.base_model.model
    embed, head = inner.model.embed_tokens, inner.lm_head
    assert head.token_adapter.trainable_tokens_delta is embed.token_adapter.trainable_tokens_delta
    delta = embed.token_adapter.trainable_tokens_delta["default"]
    ids = torch.tensor([[1, 2, 4, 9]])
    weight = embed.get_base_layer().weight
    expected_rows = torch.stack([delta[0], weight[2], delta[1], weight[9]])
    torch.testing.assert_close(embed(ids)[0], expected_rows, atol=0, rtol=0)
    hidden = torch.randn(3, weight.shape[1])
    replaced = weight.detach().clone()
    replaced[[1, 4]] = delta.detach()
    torch.testing.assert_close(head(hidden), hidden @ replaced.T, atol=1e-6, rtol=1e-6)   # math: the tied head
    torch.testing.assert_close(embed.weight, replaced, atol=0, rtol=0)   # PEFT's .weight: the merged weight


def test_rows_train_and_nothing_else_of_the_embedding_does():
    ours = quiet(surgery.get_peft_model, TIED(), surgery.LoraConfig(target_modules=["q_proj"],
                                                                     trainable_token_indices=[1, 4]))
    embed = ours.base_model.model.model.embed_tokens
    weight_before = embed.get_base_layer().weight.detach().clone()
    delta = embed.token_adapter.trainable_tokens_delta["default"]
    before = delta.detach().clone()
    optimizer = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.5)
    ours.train()
    ours(torch.tensor([[1, 4, 2]])).logits.sum().backward()
    optimizer.step()
    assert not torch.equal(delta, before)
    assert torch.equal(embed.get_base_layer().weight, weight_before)
    assert not embed.get_base_layer().weight.requires_grad


def test_t5_shared_embedding_and_its_tied_modules_equal_peft(tmp_path):
    inputs = dict(input_ids=tm.token_batch(), decoder_input_ids=tm.token_batch(seed=3))
    ours, theirs = pair(tm.tiny_t5, target_modules=["q"], trainable_token_indices={"shared": [1, 2, 5]})
    assert _wrapped(ours) == _wrapped(theirs)
    assert set(_wrapped(ours)) == {"base_model.model.shared", "base_model.model.encoder.embed_tokens",
                                   "base_model.model.decoder.embed_tokens", "base_model.model.lm_head"}
    assert printed(ours) == printed(theirs)
    train_like(ours)
    copy_state(ours, theirs)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, theirs(**inputs).logits, atol=TOL, rtol=TOL)
    assert_same_files(ours, theirs, tmp_path)
    merged = ours.merge_and_unload()
    assert merged.encoder.embed_tokens.weight.data_ptr() == merged.lm_head.weight.data_ptr()


def test_two_adapters_switch_rows_and_mixed_batches_equal_peft():
    configs = {"a": [0, 1, 2], "b": [2, 3, 4]}
    ours = quiet(surgery.get_peft_model, tm.tiny_llama(), surgery.LoraConfig(
        target_modules=["q_proj"], trainable_token_indices={"embed_tokens": configs["a"]}), adapter_name="a")
    theirs = quiet(peft.get_peft_model, tm.tiny_llama(), peft.LoraConfig(
        target_modules=["q_proj"], trainable_token_indices={"embed_tokens": configs["a"]}), adapter_name="a")
    for model, lib in ((ours, surgery), (theirs, peft)):
        quiet(model.add_adapter, "b", lib.LoraConfig(target_modules=["q_proj"],
                                                     trainable_token_indices={"embed_tokens": configs["b"]}))
    assert set(ours.state_dict()) == set(theirs.state_dict())
    for name in configs:
        ours.set_adapter(name)
        train_like(ours, seed=len(name) + ord(name))
    copy_state(ours, theirs)
    for name in configs:
        ours.set_adapter(name)
        theirs.set_adapter(name)
        torch.testing.assert_close(logits(ours), logits(theirs), atol=TOL, rtol=TOL)
    batch = torch.cat([INPUTS[:1]] * 3)
    names = ["a", "b", "__base__"]
    with torch.no_grad():
        torch.testing.assert_close(ours(batch, adapter_names=names).logits,
                                   theirs(batch, adapter_names=names).logits, atol=TOL, rtol=TOL)
    with pytest.raises(ValueError, match="are already defined and would result in undefined merging behavior"):
        ours.merge_and_unload(adapter_names=["a", "b"])


def test_resized_vocabulary_saves_the_embedding_under_peft_key(tmp_path):
    def resized():
        model = tm.tiny_llama()
        model.resize_token_embeddings(model.config.vocab_size + 2)
        return model
    ours, theirs = pair(resized, target_modules="all-linear", trainable_token_indices=[1, 2, 3])
    keys = set(surgery.get_peft_model_state_dict(ours, save_embedding_layers=True))
    assert "base_model.model.model.embed_tokens.token_adapter.base_layer.weight" in keys
    assert keys == set(peft.get_peft_model_state_dict(theirs, save_embedding_layers=True))
    assert "base_model.model.model.embed_tokens.token_adapter.base_layer.weight" not in set(
        surgery.get_peft_model_state_dict(ours))   # "auto": trainable tokens are not saved in full (as peft)


def test_plan_shows_the_rows_and_predicts_the_printed_line():
    model = TIED()
    before = copy.deepcopy(model.state_dict())
    plan = surgery.plan(model, surgery.LoraConfig(target_modules=["q_proj"], trainable_token_indices=[1, 4]))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [(a.path, a.action) for a in plan.auxiliaries] == [("model.embed_tokens", "wrap"), ("lm_head", "wrap")]
    assert plan.auxiliaries[1].params["tied_to"] == "model.embed_tokens" and plan.auxiliaries[1].added_params == 0
    table = plan.table()
    assert "trainable tokens (2 rows)" in table and "trainable tokens (rows of model.embed_tokens)" in table
    peft_model = quiet(peft.get_peft_model, TIED(), peft.LoraConfig(target_modules=["q_proj"],
                                                                    trainable_token_indices=[1, 4]))
    assert plan.totals_line() == printed(peft_model)
    assert surgery.Plan.from_json(plan.to_json()).auxiliaries == plan.auxiliaries


@pytest.mark.parametrize("value, words", [
    ([1, 1], r"trainable_token_indices = \[1, 1\] repeats \[1\]"),
    ([], r"trainable_token_indices = \[\]: selects no token"),
    ([-1], r"token ids \[-1\] are negative"),
    ("embed_tokens", r"trainable_token_indices = 'embed_tokens': expected a list of token ids"),
    ({"embed_tokens": [1.5]}, r"trainable_token_indices\['embed_tokens'\] = \[1.5\]: expected a list of token ids"),
    ({}, r"trainable_token_indices = \{\} names no embedding"),
])
def test_bad_values_are_refused_by_the_config(value, words):
    with pytest.raises(ConfigError, match=words):
        surgery.LoraConfig(target_modules=["q_proj"], trainable_token_indices=value)


def _unchanged_after(error, words, builder=tm.tiny_llama, **config):
    model = builder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    with pytest.raises(error, match=words):
        surgery.get_peft_model(model, surgery.LoraConfig(**config))
    assert [type(m) for m in model.modules()] == types
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_ids_beyond_the_embedding_are_refused_before_anything_changes():
    _unchanged_after(ConfigError, r"ids \[128, 300\] are out of range for 'model.embed_tokens' \(Embedding with 128 "
                                  r"rows\); valid ids: 0..127", target_modules=["q_proj"],
                     trainable_token_indices=[5, 128, 300])


def test_unknown_module_is_refused_in_peft_words():
    _unchanged_after(TargetNotFoundError, r"Target modules \{'does-not-exist'\} not found in the base model\.",
                     target_modules=["q_proj"], trainable_token_indices={"does-not-exist": [0, 1]})
    with pytest.raises(ValueError, match=r"Target modules \{'does-not-exist'\} not found in the base model\."):
        quiet(peft.get_peft_model, tm.tiny_llama(), peft.LoraConfig(
            target_modules=["q_proj"], trainable_token_indices={"does-not-exist": [0, 1]}))


def test_rows_and_a_full_copy_of_one_module_are_refused_in_peft_words():
    words = "The embedding layer is already marked to be trained fully"
    _unchanged_after(ConfigError, words, target_modules=["q_proj"], modules_to_save=["embed_tokens"],
                     trainable_token_indices={"embed_tokens": [0, 1]})
    with pytest.raises(ValueError, match=words):
        quiet(peft.get_peft_model, tm.tiny_llama(), peft.LoraConfig(
            target_modules=["q_proj"], modules_to_save=["embed_tokens"], trainable_token_indices={"embed_tokens": [0]}))


def test_rows_on_a_lora_target_are_a_type_error_as_in_peft():
    words = "trainable_token_indices cannot be applied to modules of type"
    _unchanged_after(ConfigTypeError, words, target_modules=["q_proj", "embed_tokens"],
                     trainable_token_indices=[0, 1])
    with pytest.raises(TypeError, match=words):
        quiet(peft.get_peft_model, tm.tiny_llama(), peft.LoraConfig(
            target_modules=["q_proj", "embed_tokens"], trainable_token_indices=[0, 1]))


def test_layer_status_reports_the_rows_layers_as_peft():
    ours, theirs = pair(TIED, target_modules=["q_proj"], trainable_token_indices=[1, 2])
    assert [vars(s) for s in ours.get_layer_status()] == [vars(s) for s in theirs.get_layer_status()]
    assert [s.name for s in ours.get_layer_status()][-1] == "model.lm_head.token_adapter"


def test_two_adapters_with_rows_on_one_embedding_cannot_be_active_together_as_in_peft():
    words = "Only one adapter can be set at a time for TrainableTokensWrapper"
    for lib in (surgery, peft):
        model = quiet(lib.get_peft_model, tm.tiny_llama(), lib.LoraConfig(target_modules=["q_proj"],
                                                                            trainable_token_indices=[0]))
        quiet(model.add_adapter, "other", lib.LoraConfig(target_modules=["q_proj"], trainable_token_indices=[0]))
        with pytest.raises(ValueError, match=words):
            model.base_model.set_adapter(["default", "other"])
        assert model.active_adapters == ["default"]   # refused before anything changed
