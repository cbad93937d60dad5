"""Trainable tokens (PEFT's TrainableTokens): train a few rows of an embedding matrix, e.g. new special tokens.

    W'[i] = delta[j]  if i = token_indices[j],  else  W[i]            delta: (n_tokens, dim), trainable
    embedding:  y = W'[ids]                     tied Linear head:  y = x @ W'^T + b
    init_weights=True: delta = W[token_indices] (a no-op until trained); False: delta ~ N(0, 1)
    merge: W[token_indices] = delta (rows replaced, not added);  unmerge: W[token_indices] = the saved originals

The rows replace, they are not added: resizing the vocabulary and reloading the base leaves trained tokens
defined. With tied weights (tie_word_embeddings: lm_head shares the embedding's weight) the tied modules follow
the target (one delta, seen by both; PEFT saves it under both paths). surgery follows any shared weight it finds,
where PEFT also asks the model config for tie_word_embeddings; for transformers models the two agree.
Differences from PEFT, on purpose: the forward never builds W' (the few rows are looked up or multiplied
separately: same outputs and gradients, no vocabulary-sized copy per step), and a Linear keeps its bias
(PEFT's own forward drops it, so an untrained adapter would change the layer's output).

    config.py  TrainableTokensConfig     layer.py  TrainableTokensLayer (rows, ties, merge)
    spec.py    the registry entry        rows.py   the forward shortcut      model.py  TrainableTokensModel
    wrapper.py TrainableTokensWrapper: these rows beside another method's adapter (LoRA's trainable_token_indices)
"""
from .config import TrainableTokensConfig
from .model import TrainableTokensModel
from .spec import SPEC

__all__ = ["TrainableTokensConfig", "TrainableTokensModel"]
