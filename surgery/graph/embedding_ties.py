"""Which modules are tied to the model's input embedding, by PEFT 0.21.2's rule (_get_module_names_tied_with_embedding).

None when the model's config says tie_word_embeddings=False or the model declares no `_tied_weights_keys`; else
the modules those keys name (transformers v5: {target: source} over every submodule, prefixed; v4: a list of
targets) whose source holds the input embedding's weight. Holding is found by parameter identity, seeing through
adapter layers to their base layers, so a second adapter finds the ties the first one wrapped.

Also PEFT's test of whether a config names an embedding (`EMBEDDING_LAYER_NAMES`), and its warning for a tied
module that a method cannot keep tied.
"""
from __future__ import annotations

import re
import warnings
from typing import Optional

from torch import nn

from ..errors import PeftWarning, PlanError
from .walk import is_adapter_layer, iter_modules

EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")   # PEFT's: how it tells a config names an embedding
NO_TYING_WARNING = ("Model has `tie_word_embeddings=True` and a tied layer is part of the adapter, but no "
                    "implementation exists to tie the adapters. This can lead to complications, for example when "
                    "merging the adapter or converting your model to formats other than safetensors. Check the "
                    "discussion here: https://github.com/huggingface/peft/issues/2777")


def _base(module: nn.Module) -> nn.Module:
    return module.get_base_layer() if is_adapter_layer(module) else module


def input_embedding_path(model: nn.Module) -> Optional[str]:
    """The path of model.get_input_embeddings() (None without one)."""
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    for name, module in iter_modules(model):
        if module is embedding:
            return name
    return None


def _declared_ties(model: nn.Module):
    """{target key: source key} (every submodule's, prefixed), a list of target keys, or None."""
    if not hasattr(model, "_tied_weights_keys"):
        return None
    keys = model._tied_weights_keys
    if not isinstance(keys, dict):
        return list(keys) if keys is not None else None
    found: dict[str, str] = {}
    for name, module in model.named_modules():
        declared = getattr(module, "_tied_weights_keys", None)
        if isinstance(declared, dict) and declared:
            found.update({(f"{name}.{k}" if name else k): (f"{name}.{v}" if name else v) for k, v in declared.items()})
    return found


def tied_with_input_embedding(model: nn.Module) -> list[str]:
    """The modules tied to the input embedding, by PEFT's rule (sorted paths)."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_word_embeddings", None) is False:
        return []
    declared = _declared_ties(model)
    if declared is None:
        return []
    if not isinstance(declared, dict):
        return sorted({key.rpartition(".")[0] for key in declared})
    embedding_path = input_embedding_path(model)
    if embedding_path is None:
        raise PlanError("The supplied model implements `_tied_weights_keys` as a dict but doesn't implement "
                        "'get_input_embeddings' so we can't determine which weights are tied to embeddings.")
    params = {id(p) for p in _base(model.get_submodule(embedding_path))._parameters.values() if p is not None}
    sources = {name for name, module in iter_modules(model)
               if any(id(p) in params for p in _base(module)._parameters.values() if p is not None)}
    sources.add(embedding_path)
    return sorted({key.rpartition(".")[0] for key, source in declared.items()
                   if source.rpartition(".")[0] in sources})


def names_embedding(names) -> bool:
    """PEFT's test of modules_to_save (or a list of targets): an entry whose last part names an embedding."""
    return any(str(m).split(".")[-1] in EMBEDDING_LAYER_NAMES for m in names or [])


def targets_embedding(targets) -> bool:
    """PEFT's test of target_modules: a regex matching an embedding's name, or a list naming one."""
    if isinstance(targets, str):
        return any(re.fullmatch(targets, name) for name in EMBEDDING_LAYER_NAMES)
    return names_embedding(targets)


def warn_if_tie_not_kept(config, model: nn.Module) -> None:
    """PEFT's warning for a method that cannot keep a tie: a tied embedding or head is part of the adapter."""
    adapted = names_embedding(getattr(config, "modules_to_save", None)) or targets_embedding(
        getattr(config, "target_modules", None))
    if adapted and tied_with_input_embedding(model):
        warnings.warn(NO_TYING_WARNING, PeftWarning, stacklevel=4)
