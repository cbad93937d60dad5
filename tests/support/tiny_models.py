"""Tiny random-weight models shared by the tests, the golden-fixture generator and the benchmarks.

Every builder is deterministic (seeded) so the same call gives the same weights in any process.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)


def _seeded(builder, seed: int):
    torch.manual_seed(seed)
    model = builder()
    return model.eval()


def llama_config(**overrides) -> LlamaConfig:
    values = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  tie_word_embeddings=False)
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    return _seeded(lambda: LlamaForCausalLM(llama_config(**overrides)), seed)


def gpt2_config(**overrides) -> GPT2Config:
    values = dict(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=1)
    values.update(overrides)
    return GPT2Config(**values)


def tiny_gpt2(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    return _seeded(lambda: GPT2LMHeadModel(gpt2_config(**overrides)), seed)


def bert_config(**overrides) -> BertConfig:
    values = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=128, num_labels=3)
    values.update(overrides)
    return BertConfig(**values)


def tiny_bert_seq_cls(seed: int = 0, **overrides) -> BertForSequenceClassification:
    return _seeded(lambda: BertForSequenceClassification(bert_config(**overrides)), seed)


def tiny_bert_qa(seed: int = 0, **overrides) -> BertForQuestionAnswering:
    return _seeded(lambda: BertForQuestionAnswering(bert_config(**overrides)), seed)


def tiny_bert(seed: int = 0, **overrides) -> BertModel:
    return _seeded(lambda: BertModel(bert_config(**overrides)), seed)


def t5_config(**overrides) -> T5Config:
    values = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                  num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    values.update(overrides)
    return T5Config(**values)


def tiny_t5(seed: int = 0, **overrides) -> T5ForConditionalGeneration:
    return _seeded(lambda: T5ForConditionalGeneration(t5_config(**overrides)), seed)


class TinyConvNet(nn.Module):
    """A small vision-style model with Conv1d/2d/3d, an Embedding and Linear layers."""

    def __init__(self):
        super().__init__()
        self.conv2d = nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.conv2d_strided = nn.Conv2d(8, 8, kernel_size=3, stride=2, padding=1)
        self.conv1d = nn.Conv1d(8, 8, kernel_size=3, padding=1)
        self.conv3d = nn.Conv3d(1, 4, kernel_size=(1, 3, 3), padding=(0, 1, 1))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.conv2d(x))
        h = torch.relu(self.conv2d_strided(h))          # (b, 8, H/2, W/2)
        b, c, hh, ww = h.shape
        h1 = self.conv1d(h.flatten(2))                  # (b, 8, hh*ww)
        h3 = self.conv3d(h.unsqueeze(1))                # (b, 4, 8, hh, ww)
        pooled = h1.mean(-1) + h3.mean((1, 3, 4))
        return self.head(pooled)


def tiny_convnet(seed: int = 0) -> TinyConvNet:
    return _seeded(TinyConvNet, seed)


class TinyEmbedMLP(nn.Module):
    """Embedding + MLP, for LoRA on nn.Embedding."""

    def __init__(self, vocab: int = 50, dim: int = 16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.lin0 = nn.Linear(dim, dim)
        self.lin1 = nn.Linear(dim, 4)

    def forward(self, input_ids):
        return self.lin1(torch.relu(self.lin0(self.emb(input_ids)))).mean(1)


def tiny_embed_mlp(seed: int = 0) -> TinyEmbedMLP:
    return _seeded(TinyEmbedMLP, seed)


def token_batch(vocab: int = 128, batch: int = 2, seq: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (batch, seq), generator=g)
