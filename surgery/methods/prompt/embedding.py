"""PromptEmbedding: prompt tuning's trainable virtual-token embeddings.

    prompt tokens 0..T-1 ──► embedding (T x token_dim) ──► prepended to the input embeddings

T = num_virtual_tokens * num_transformer_submodules. The start values come from one of three
initialisers (RANDOM: N(0, 1) as nn.Embedding; SAMPLE_VOCAB: rows of random vocabulary tokens; TEXT:
the embeddings of a text, repeated to fill T). Initialisers run only when training (inference_mode False):
an adapter loaded for inference gets its values from the checkpoint.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import torch
from torch import nn

from .config import PromptTuningInit
from ...errors import ConfigError, PeftWarning


class PromptEmbedding(nn.Module):
    """PEFT's class and attribute names: `embedding` holds the virtual tokens."""

    def __init__(self, config, word_embeddings: Optional[nn.Module] = None, *, initialise: bool = True):
        super().__init__()
        total = config.num_virtual_tokens * (config.num_transformer_submodules or 1)
        self.embedding = nn.Embedding(total, config.token_dim)
        if initialise and not config.inference_mode:
            start = INITIALISERS[PromptTuningInit(config.prompt_tuning_init)](config, word_embeddings, total)
            if start is not None:
                self.embedding.weight = nn.Parameter(start.detach().clone().to(torch.float32))

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embedding(indices)


def _random(config, word_embeddings, total: int) -> None:
    return None  # nn.Embedding's own N(0, 1) init


def _sample_vocab(config, word_embeddings, total: int) -> torch.Tensor:
    weight = _weight_of(word_embeddings)
    ids = torch.randint(0, weight.shape[0], (total,), dtype=torch.long).to(weight.device)
    return word_embeddings(ids)


def _text(config, word_embeddings, total: int) -> torch.Tensor:
    ids = text_token_ids(config)
    if len(ids) > total:   # PEFT keeps the first tokens; say so, since the prompt then starts from part of it
        warnings.warn(
            f"prompt_tuning_init_text is {len(ids)} tokens long (with special tokens) but the prompt has only "
            f"{total} virtual tokens (num_virtual_tokens={config.num_virtual_tokens} x "
            f"num_transformer_submodules={config.num_transformer_submodules or 1}): it starts from the first "
            f"{total} tokens, as in PEFT; raise num_virtual_tokens to at least "
            f"{math.ceil(len(ids) / (config.num_transformer_submodules or 1))} to use all of it", PeftWarning)
    ids = (ids * math.ceil(total / len(ids)))[:total]  # a short text is repeated to fill the prompt
    weight = _weight_of(word_embeddings)
    return word_embeddings(torch.tensor(ids, dtype=torch.long, device=weight.device))


def text_token_ids(config) -> list[int]:
    """The init text's token ids, from the tokenizer at tokenizer_name_or_path (a local path or a Hub id,
    read from the local cache when offline). Remote code is never run."""
    from transformers import AutoTokenizer

    kwargs = {k: v for k, v in (config.tokenizer_kwargs or {}).items() if k != "trust_remote_code"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"tokenizer_name_or_path = {config.tokenizer_name_or_path!r}: no tokenizer could be "
                          f"loaded from that path or the Hub cache ({exc})") from None
    ids = list(tokenizer(config.prompt_tuning_init_text)["input_ids"])
    if not ids:
        raise ConfigError("prompt_tuning_init_text tokenizes to no tokens; give a non-empty text")
    return ids


def _weight_of(word_embeddings) -> torch.Tensor:
    weight = getattr(word_embeddings, "weight", None)
    if weight is None:
        raise ConfigError("this prompt_tuning_init needs the model's word embeddings, and none were found")
    return weight


INITIALISERS: dict[PromptTuningInit, Callable] = {
    PromptTuningInit.RANDOM: _random,
    PromptTuningInit.SAMPLE_VOCAB: _sample_vocab,
    PromptTuningInit.TEXT: _text,
}
