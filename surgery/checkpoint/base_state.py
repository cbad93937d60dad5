"""get_base_model_state_dict / set_base_model_state_dict: the base model's weights under their original keys.

An adapted model's state dict has the wrappers' infixes (`q_proj.base_layer.weight`,
`score.original_module.weight`) and the adapters' own entries. These two functions give and take the keys
the model had before any adapter, e.g. to load base weights after FSDP wrapping.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Optional

import torch
from torch import nn

from ..rewrite.trainable import adapter_layers

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _root(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _original_key(key: str, wrappers: dict[str, nn.Module]) -> Optional[str]:
    """The key before adapters, or None for an adapter's own entry. `wrappers`: {path prefix + ".": layer}."""
    parts = key.split(".")
    out: list[str] = []
    i = 0
    while i < len(parts):
        prefix = ".".join(parts[: i + 1]) + "."
        out.append(parts[i])
        i += 1
        layer = wrappers.get(prefix)
        while layer is not None:   # a wrapper, and those stacked inside it (one per adapted parameter)
            # the wrapper's infix: its own (`base_infix`, e.g. "token_adapter.base_layer"), or the usual one
            default = "original_module" if getattr(layer, "_surgery_modules_to_save", False) else "base_layer"
            inner = getattr(type(layer), "base_infix", default).split(".")
            if parts[i:i + len(inner)] != inner:
                return None   # an adapter's parameter (a container entry, modules_to_save.<adapter>...)
            i += len(inner)   # drop the wrapper's infix
            layer = wrappers.get(".".join(parts[:i]) + ".")
    return ".".join(out)


def _key_map(model: nn.Module) -> dict[str, str]:
    """{original key: current key} of every base-model entry."""
    root = _root(model)
    wrappers = {f"{name}.": layer for name, layer in adapter_layers(root)}
    mapping = {}
    for key in root.state_dict(keep_vars=True):
        original = _original_key(key, wrappers)
        if original is not None:
            mapping[original] = key
    return mapping


def get_base_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict, keyed as before any adapter was added (adapter entries left out)."""
    current = _root(model).state_dict()
    return {original: current[key] for original, key in _key_map(model).items()}


def set_base_model_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True):
    """Load base-model weights given under their original keys; returns (missing_keys, unexpected_keys).

    strict: a missing or unexpected key raises RuntimeError (as torch's load_state_dict) before anything loads."""
    mapping = _key_map(model)
    unexpected = [k for k in state_dict if k not in mapping]
    missing = [k for k in mapping if k not in state_dict]
    if strict and (missing or unexpected):
        lines = ([f"Missing key(s) in state_dict: {missing}"] if missing else []) + \
                ([f"Unexpected key(s) in state_dict: {unexpected}"] if unexpected else [])
        raise RuntimeError("Error(s) in loading state_dict:\n\t" + "\n\t".join(lines))
    renamed = {mapping[k]: v for k, v in state_dict.items() if k in mapping}
    _root(model).load_state_dict(renamed, strict=False)
    return IncompatibleKeys(missing_keys=missing, unexpected_keys=unexpected)
