"""PrefixEncoder: prefix tuning's per-layer key/value states, and how the flat vector maps to layers.

    prefix tokens 0..P-1 ─► embedding (P x L*2*d)                                (prefix_projection False)
                        └► embedding (P x d) ─ Linear(d, h) ─ tanh ─ Linear(h, L*2*d)  (prefix_projection)

Each row is cut into L layers x (key, value) x heads x head_dim (d = heads * head_dim). Layer i attends
over [prefix_k(i); k] and [prefix_v(i); v]: the P prefix slots cost no input tokens.

The layer layout is PEFT's, so checkpoints move both ways: the flat row is viewed as
(2L, heads, head_dim), duplicated when num_transformer_submodules is 2, and cut into L chunks of
2 * num_transformer_submodules rows; layer i takes the first two rows of chunk i as its key and value.
"""
from __future__ import annotations

import torch
from torch import nn


class PrefixEncoder(nn.Module):
    """PEFT's class and attribute names: `embedding` (+ `transform` with prefix_projection)."""

    def __init__(self, config):
        super().__init__()
        self.prefix_projection = config.prefix_projection
        width = config.num_layers * 2 * config.token_dim
        if self.prefix_projection and not config.inference_mode:
            hidden = config.encoder_hidden_size or config.token_dim
            self.embedding = nn.Embedding(config.num_virtual_tokens, config.token_dim)
            self.transform = nn.Sequential(nn.Linear(config.token_dim, hidden), nn.Tanh(), nn.Linear(hidden, width))
            if config.init_weights == "zero":
                nn.init.zeros_(self.transform[-1].weight)
                nn.init.zeros_(self.transform[-1].bias)
        else:
            # inference mode keeps the projected prefix itself (what a checkpoint stores)
            self.embedding = nn.Embedding(config.num_virtual_tokens, width)
            if config.init_weights == "zero":
                nn.init.zeros_(self.embedding.weight)

    def forward(self, prefix: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "transform"):
            return self.transform(self.embedding(prefix))
        return self.embedding(prefix)


def legacy_layers(flat: torch.Tensor, config, batch_size: int) -> tuple[torch.Tensor, ...]:
    """(1, P, L*2*d) -> L tensors of shape (2 * submodules, batch, heads, P, head_dim), PEFT's legacy layout."""
    heads = config.num_attention_heads
    submodules = config.num_transformer_submodules or 1
    kv = flat.reshape(1, config.num_virtual_tokens, 2 * config.num_layers, heads, config.token_dim // heads)
    if submodules == 2:
        kv = torch.cat([kv, kv], dim=2)
    kv = kv.permute(2, 0, 3, 1, 4).expand(-1, batch_size, -1, -1, -1)
    return kv.split(2 * submodules)


def layer_states(flat: torch.Tensor, config, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (key, value) prefix of every layer, each (batch, heads, P, head_dim)."""
    layers = legacy_layers(flat, config, batch_size)
    postprocess = getattr(config, "postprocess_past_key_value_function", None)
    if postprocess is not None:
        layers = postprocess(layers)
    return [(layer[0], layer[1]) for layer in layers]


def bloom_model_postprocess_past_key_value(past_key_values: tuple) -> tuple:
    """PEFT's re-layout of prefix key/values for BLOOM's old cache: the tensors (n, batch, heads, T, head_dim)
    are concatenated, the first half of the rows are keys ((batch*heads, head_dim, T) each), the second half
    values ((batch*heads, T, head_dim)), paired per layer. Transformers 5's BLOOM takes the standard layout, so
    the table below is empty, as PEFT's is under it."""
    stacked = torch.cat(past_key_values)
    total, batch, heads, tokens, head_dim = stacked.shape
    keys = stacked[: total // 2].transpose(2, 3).reshape(total // 2, batch * heads, head_dim, tokens)
    values = stacked[total // 2:].reshape(total // 2, batch * heads, tokens, head_dim)
    return tuple(zip(keys, values))


# model_type -> post-processing of the prefix key/values; PEFT fills it only for transformers <= 4.53 layouts
TRANSFORMERS_MODELS_TO_PREFIX_TUNING_POSTPROCESS_MAPPING: dict = {}
