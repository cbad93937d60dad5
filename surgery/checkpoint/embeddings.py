"""save_embedding_layers: saving the full input/output embedding weights with an adapter, as PEFT does.

Why: after `resize_token_embeddings` the new token rows live only in the fine-tuned model; an adapter saved
without them reloads onto a fresh (resized) base with random rows for the new tokens. PEFT's "auto" (the
default) saves them when an embedding layer is an adapter target, or when the model's vocab_size differs from the
base model's config.json. surgery reads that config only from a local directory or the local Hub cache
(never the network); when it cannot be found the vocabulary is taken as unchanged, as PEFT does offline.

Keys are the model's own: `base_model.model.<path>.weight` for an embedding that is not adapted, and
`base_model.model.<path>.base_layer.weight` for one wrapped by an adapter layer (both load back into the same tensor).
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Optional, Union

import torch
from torch import nn

from ..graph.walk import is_adapter_layer
from ..methods.registry import get_method

logger = logging.getLogger(__name__)

EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")
PREFIX = "base_model.model."


def embedding_is_targeted(base_model: nn.Module, config) -> bool:
    """PEFT's rule: a list names embed_tokens/lm_head, or a regex fully matches such a module's path."""
    targets = getattr(config, "target_modules", None)
    if not targets:
        return False
    if isinstance(targets, str):
        if targets == "all-linear":
            return False
        names = [n for n, _ in base_model.named_modules()
                 if any(re.match(rf"(.*\.)?{e}$", n) for e in EMBEDDING_LAYER_NAMES)]
        return any(re.fullmatch(targets, n) for n in names)
    return any(name in targets for name in EMBEDDING_LAYER_NAMES)


def resolve(peft_model, config, value: Union[bool, str]) -> tuple[bool, bool]:
    """(save the embeddings?, are they adapter targets?) for save_embedding_layers=value."""
    if value not in (True, False, "auto"):
        raise ValueError(f"save_embedding_layers = {value!r}; valid: True, False or 'auto'")
    base = peft_model.get_base_model()
    targeted = embedding_is_targeted(base, config)
    if value != "auto":
        return bool(value), targeted
    saves = get_method(config.peft_type).saves_targeted_embeddings
    if targeted and (saves(config) if callable(saves) else saves):
        logger.warning("save_embedding_layers='auto': saving the embedding layers, which are in target_modules")
        return True, targeted
    vocab = getattr(getattr(base, "config", None), "vocab_size", None)
    base_vocab = _base_vocab_size(getattr(config, "base_model_name_or_path", None))
    if vocab and base_vocab and vocab != base_vocab:
        logger.warning("save_embedding_layers='auto': saving the embedding layers, resized from %d to %d tokens",
                       base_vocab, vocab)
        return True, targeted
    return False, targeted


def embedding_tensors(peft_model, targeted: bool) -> dict[str, torch.Tensor]:
    """{model key: tensor} of the input and output embeddings' full weights (PEFT's selection)."""
    base = peft_model.get_base_model()
    if not (hasattr(base, "get_input_embeddings") and hasattr(base, "get_output_embeddings")):
        logger.warning("save_embedding_layers: the model has no get_input_embeddings(); nothing extra saved")
        return {}
    out: dict[str, torch.Tensor] = {}
    for layer in (base.get_input_embeddings(), base.get_output_embeddings()):
        if layer is None or getattr(layer, "_surgery_modules_to_save", False):
            continue   # a modules_to_save copy is saved with the adapter already
        wrapped = is_adapter_layer(layer)
        if targeted and not wrapped:
            continue   # PEFT: when the embeddings are targets, only the wrapped ones' base layers are saved
        module = layer.get_base_layer() if wrapped else layer
        path = _path_of(base, module)
        if path is not None:
            out.update({f"{PREFIX}{path}.{k}": v for k, v in module.state_dict().items()})
    return out


def loadable_embedding_keys(peft_model, state: dict, known: dict) -> dict[str, torch.Tensor]:
    """{key: target tensor} for full embedding weights in a checkpoint (`<embedding path>.weight`)."""
    base = peft_model.get_base_model()
    if not hasattr(base, "get_input_embeddings"):
        return {}
    out = {}
    for layer in (base.get_input_embeddings(), getattr(base, "get_output_embeddings", lambda: None)()):
        if layer is None or is_adapter_layer(layer):
            continue   # wrapped layers: `<path>.base_layer.weight`, handled with the other base-layer keys
        if getattr(layer, "weight", None) is None:
            continue
        path = _path_of(base, layer)
        key = f"{PREFIX}{path}.weight"
        if path is not None and key in state and key not in known:
            out[key] = layer.weight
    return out


def _path_of(root: nn.Module, target: nn.Module) -> Optional[str]:
    for name, module in root.named_modules():
        if module is target:
            return name
    return None


def _base_vocab_size(model_id: Optional[str]) -> Optional[int]:
    """vocab_size from the base model's config.json: a local directory, or the local Hub cache (no network)."""
    if not model_id:
        return None
    path = os.path.join(model_id, "config.json")
    if not os.path.isfile(path):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model_id, "config.json")
        except Exception:   # not a valid repo id, or no cache: unknown, as PEFT offline
            cached = None
        path = cached if isinstance(cached, str) else None
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("vocab_size")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) else None
