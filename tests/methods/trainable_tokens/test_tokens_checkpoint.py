"""Checkpoint keys: `<path>.trainable_tokens_delta` (one per wrapped module, tied followers included, as PEFT
saves them), the originals never saved, and PEFT's folder loads into surgery and back."""
from __future__ import annotations

import warnings

import peft
import pytest
import torch

import surgery
from tests.support import tiny_models as tm


def _models(builder, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (surgery.get_peft_model(builder(), surgery.TrainableTokensConfig(**kwargs)),
                peft.get_peft_model(builder(), peft.TrainableTokensConfig(**kwargs)))


@pytest.mark.parametrize("builder", [tm.tiny_gpt2, tm.tiny_t5, tm.tiny_bert], ids=["gpt2", "t5", "bert"])
def test_saved_keys_are_peft_keys(builder):
    ours, theirs = _models(builder, token_indices=[1, 2, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = peft.get_peft_model_state_dict(theirs)
    got = surgery.get_peft_model_state_dict(ours)
    assert sorted(got) == sorted(want)
    assert all(k.endswith(".trainable_tokens_delta") for k in got)
    assert all(tuple(got[k].shape) == (3, 32) for k in got)


def test_the_originals_are_buffers_that_are_not_saved():
    ours, _ = _models(tm.tiny_llama, token_indices=[1, 2])
    buffers = [n for n, _ in ours.named_buffers() if "trainable_tokens_original" in n]
    assert buffers == ["base_model.model.model.embed_tokens.trainable_tokens_original.default"]
    assert not any("original" in k for k in ours.state_dict())


def test_an_explicit_module_list_saves_peft_keys_on_llama():
    ours, theirs = _models(tm.tiny_llama, token_indices=[1, 2], target_modules=["model.embed_tokens"])
    assert sorted(surgery.get_peft_model_state_dict(ours)) == sorted(peft.get_peft_model_state_dict(theirs))


def test_the_default_target_on_llama_saves_peft_keys():
    ours, theirs = _models(lambda: tm.tiny_llama(tie_word_embeddings=True), token_indices=[1, 2])
    assert sorted(surgery.get_peft_model_state_dict(ours)) == sorted(peft.get_peft_model_state_dict(theirs))


def test_a_config_without_target_modules_saves_peft_config(tmp_path):
    ours, theirs = _models(tm.tiny_gpt2, token_indices=[4])
    assert ours.peft_config["default"].target_modules == theirs.peft_config["default"].target_modules
    ours.save_pretrained(tmp_path)
    loaded = surgery.PeftModel.from_pretrained(tm.tiny_gpt2(), str(tmp_path))
    assert loaded.peft_config["default"].target_modules == "transformer.wte"
    ids = tm.token_batch()
    assert torch.equal(loaded(input_ids=ids).logits, ours(input_ids=ids).logits)
