"""Prompt learning trains: the loss falls on a toy task; initialisers (TEXT, SAMPLE_VOCAB) start where PEFT's do."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import surgery
from tests.support import tiny_models as tm
from tests.support.prompt_cases import word_tokenizer  # noqa: F401 (a fixture)

peft = pytest.importorskip("peft")


def _train(model, batch: dict, steps: int, lr: float) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("config,lr", [
    (surgery.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8), 0.1),
    (surgery.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=8, encoder_hidden_size=32), 0.03),
    (surgery.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8), 0.03),
])
def test_prompt_learning_lowers_the_loss_on_a_toy_task(config, lr):
    """Teach a frozen random GPT-2 to continue 5 6 7 8 5 6 7 8 ... through the prompt alone (30 steps)."""
    torch.manual_seed(0)
    base = tm.tiny_gpt2(initializer_range=0.3)   # weights large enough for a prompt to steer
    frozen = copy.deepcopy(base.state_dict())
    model = surgery.get_peft_model(base, config)
    ids = torch.tensor([[5, 6, 7, 8] * 4, [6, 7, 8, 5] * 4])
    losses = _train(model, {"input_ids": ids, "labels": ids}, steps=30, lr=lr)
    assert losses[-1] < 0.75 * losses[0], losses
    assert all(torch.equal(v, frozen[k]) for k, v in model.get_base_model().state_dict().items())


def test_prefix_tuning_trains_bert_through_the_attention_hooks():
    torch.manual_seed(0)
    base = tm.tiny_bert_seq_cls(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = surgery.get_peft_model(base, surgery.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4))
    batch = {"input_ids": tm.token_batch(batch=4), "labels": torch.tensor([0, 1, 2, 1])}
    losses = _train(model, batch, steps=20, lr=0.05)
    assert losses[-1] < 0.5 * losses[0], losses
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"prompt_encoder.default.embedding.weight",
                       "base_model.model.classifier.modules_to_save.default.weight",
                       "base_model.model.classifier.modules_to_save.default.bias"}


def test_text_init_starts_from_the_text_embeddings_like_peft(word_tokenizer):
    fields = dict(task_type="CAUSAL_LM", num_virtual_tokens=8, prompt_tuning_init="TEXT",
                  prompt_tuning_init_text="classify the sentiment", tokenizer_name_or_path=str(word_tokenizer))
    ours = surgery.get_peft_model(tm.tiny_gpt2(), surgery.PromptTuningConfig(**fields))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(tm.tiny_gpt2(), peft.PromptTuningConfig(**fields))
    start = ours.prompt_encoder.default.embedding.weight
    torch.testing.assert_close(start, theirs.prompt_encoder.default.embedding.weight, atol=0, rtol=0)
    words = ours.word_embeddings.weight
    ids = [1, 2, 3] * 3   # the three words, repeated to fill the eight tokens
    torch.testing.assert_close(start, words[ids[:8]], atol=0, rtol=0)


def test_sample_vocab_init_takes_rows_of_the_vocabulary():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=6, prompt_tuning_init="SAMPLE_VOCAB"))
    start, words = model.prompt_encoder.default.embedding.weight, model.word_embeddings.weight
    for row in start:
        assert (words == row).all(-1).any()
