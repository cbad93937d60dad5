"""Inputs of the golden cases: (tensors, description) pairs, built deterministically from tests.support.tiny_models."""
from __future__ import annotations

import torch

from tests.support import tiny_models

def llama_inputs():
    ids = tiny_models.token_batch(vocab=128, batch=2, seq=8, seed=1)
    return (
        {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
        {"input_ids": "tiny_models.token_batch(vocab=128, batch=2, seq=8, seed=1), int64 (2, 8)",
         "attention_mask": "all ones, int64 (2, 8)"},
    )


def _padded_mask(ids, lengths):
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return mask


def bert_inputs():
    ids = tiny_models.token_batch(vocab=128, batch=2, seq=8, seed=1)
    mask = _padded_mask(ids, [8, 5])
    ids = ids.masked_fill(mask == 0, 0)  # pad_token_id 0
    return (
        {"input_ids": ids, "attention_mask": mask},
        {"input_ids": "token_batch(vocab=128, batch=2, seq=8, seed=1); row 1 right-padded with 0 after 5 tokens",
         "attention_mask": "int64 (2, 8): row 0 all ones, row 1 ones for the first 5 tokens"},
    )


def t5_inputs():
    ids = tiny_models.token_batch(vocab=128, batch=2, seq=8, seed=1)
    mask = _padded_mask(ids, [8, 6])
    ids = ids.masked_fill(mask == 0, 0)
    dec = tiny_models.token_batch(vocab=128, batch=2, seq=5, seed=2)
    dec[:, 0] = 0  # decoder_start_token_id
    return (
        {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec},
        {"input_ids": "token_batch(vocab=128, batch=2, seq=8, seed=1); row 1 padded with 0 after 6 tokens",
         "attention_mask": "int64 (2, 8): row 0 all ones, row 1 ones for the first 6 tokens",
         "decoder_input_ids": "token_batch(vocab=128, batch=2, seq=5, seed=2) with column 0 set to 0 "
                              "(decoder_start_token_id)"},
    )


def gpt2_inputs():
    ids = tiny_models.token_batch(vocab=128, batch=2, seq=8, seed=1)
    return (
        {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
        {"input_ids": "token_batch(vocab=128, batch=2, seq=8, seed=1), int64 (2, 8)",
         "attention_mask": "all ones, int64 (2, 8)"},
    )


def conv_inputs():
    g = torch.Generator().manual_seed(3)
    return (
        {"pixel": torch.randn(2, 3, 8, 8, generator=g)},
        {"pixel": "torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)), float32; "
                  "passed positionally: model(pixel)"},
    )


def embed_inputs():
    ids = tiny_models.token_batch(vocab=50, batch=2, seq=6, seed=1)
    ids[1, 4:] = 0  # padding_idx tokens
    return (
        {"input_ids": ids},
        {"input_ids": "token_batch(vocab=50, batch=2, seq=6, seed=1) with ids[1, 4:] = 0 (padding_idx), int64 (2, 6)"},
    )
