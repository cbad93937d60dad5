"""trainable_token_indices: besides LoRA, train chosen rows of the embedding(s) (PEFT's TrainableTokensWrapper).

The rows are the trainable-tokens method's (methods/trainable_tokens): each selected module is wrapped in a
TrainableTokensWrapper holding its rows; only the rows are saved (`<path>.token_adapter.trainable_tokens_delta`).
Which modules, as PEFT 0.21.2 decides (utils/other.py, set_additional_trainable_modules):

  a list of ids           the input embedding (model.get_input_embeddings(); "embed_tokens" without one)
  {name: ids}             every module whose path ends with `name`; none found is an error
  tied heads              on a tie_word_embeddings model whose input embedding gets rows, the modules tied to it
                          follow its rows (one set of rows; the followers save nothing), unless the dict gives
                          tied modules different ids and ensure_weight_tying is off (then each keeps its own)
  ensure_weight_tying     tied modules with different ids are an error; on an untied model, a warning

Checked before anything changes: ids within the module's rows, no module both trained in full (modules_to_save)
and by rows, no module that is also a LoRA target (PEFT: a TypeError).
"""
from __future__ import annotations

import warnings

from torch import nn

from ...errors import ConfigError, ConfigTypeError, PeftWarning, TargetNotFoundError
from ...graph.walk import is_adapter_layer
from ...methods.spec import qualified_name
from ...plan.model import AuxiliaryWrap
from ...plan.ties import TIED_TO
from ..trainable_tokens.spec import input_embedding_name
from ..trainable_tokens.wrapper import TrainableTokensWrapper
from .weight_tying import input_embedding_path, model_ties_weights, tied_with_input_embedding

FIELD = "LoraConfig.trainable_token_indices"
WRAPPER = qualified_name(TrainableTokensWrapper)


def _targets(config, model: nn.Module) -> dict[str, list[int]]:
    value = config.trainable_token_indices
    if isinstance(value, dict):
        return {name: list(ids) for name, ids in value.items()}
    return {input_embedding_name(model): list(value)}


def _tied_keys(targets: dict, model: nn.Module, tied: set[str]) -> list[str]:
    """The target names that are the input embedding or a module tied to it (PEFT's matching)."""
    embedding = input_embedding_path(model) or ""
    keys = []
    for name in targets:
        if embedding.endswith(name) or any(t.endswith(name) or name in t.split(".") for t in tied):
            keys.append(name)
    return keys


def _wrap(site, path: str, ids: list[int], leader: str = "") -> AuxiliaryWrap:
    """One wrap of `path` (checked): its own rows, or (leader) the rows of the wrap at that path."""
    module = site.graph.nodes[path]["module"]
    existing = isinstance(module, TrainableTokensWrapper)
    if not existing and (path in site.targets or is_adapter_layer(module)):
        kind = "a LoRA target" if path in site.targets else f"a {type(module).__name__} adapter layer"
        raise ConfigTypeError(f"trainable_token_indices cannot be applied to modules of type {type(module)} "
                              f"({path!r} is {kind}); train its rows or give it LoRA, not both: drop it from "
                              f"target_modules or from {FIELD}")
    if path in site.saved:
        raise ConfigError(f"{FIELD}: {path!r} is also in modules_to_save (trained in full); train it in full or "
                          f"by rows, not both")
    base = module.get_base_layer() if existing else module
    if not isinstance(base, (nn.Embedding, nn.Linear)):
        raise ConfigError(f"{FIELD}: {path!r} is a {type(base).__name__}; trainable rows apply to nn.Embedding (and "
                          f"to an nn.Linear head, whose rows are its outputs)")
    rows = base.weight.shape[0]
    beyond = sorted(i for i in ids if i >= rows)
    if beyond:
        raise ConfigError(f"{FIELD} = {site.config.trainable_token_indices!r}: ids {beyond} are out of range for "
                          f"{path!r} ({type(base).__name__} with {rows} rows); valid ids: 0..{rows - 1} (resize the "
                          f"embeddings first for new tokens)")
    params = {"token_indices": list(ids), "tokens": len(ids), "init_weights": True}
    if leader:
        params[TIED_TO] = leader
    kind = f"trainable tokens (rows of {leader})" if leader else f"trainable tokens ({len(ids)} rows)"
    added = 0 if leader else len(ids) * base.weight.shape[1]
    return AuxiliaryWrap(path=path, base_type=type(base).__name__, wrapper=WRAPPER, kind=kind,
                         action="add" if existing else "wrap", added_params=added, params=params)


def _paths_ending(graph, name: str) -> list[str]:
    return [path for path in graph.nodes if path and path.endswith(name)]


def plan_token_wraps(site) -> list[AuxiliaryWrap]:
    """The TrainableTokensWrapper wraps for config.trainable_token_indices (MethodSpec.auxiliary)."""
    config, model, graph = site.config, site.model, site.graph
    if config.trainable_token_indices is None:
        return []
    targets = _targets(config, model)
    for name in targets:   # PEFT's words first
        if name in (config.modules_to_save or []):
            raise ConfigError(f"The embedding layer is already marked to be trained fully, either specify "
                              f"`modules_to_save=[..., \"{name}\", ...]` or `trainable_tokens={{'{name}': x}}` but "
                              f"not both.")
    tied_model, ensure = model_ties_weights(model), bool(config.ensure_weight_tying)
    tied = set(tied_with_input_embedding(model)) if tied_model else set()
    mismatch, skipped = False, set()
    if len(targets) > 1 and tied:
        keys = _tied_keys(targets, model, tied)
        if len(keys) >= 2:
            mismatch = any(targets[k] != targets[keys[0]] for k in keys[1:])
            if mismatch and ensure:
                info = ", ".join(f"{k}: {targets[k]}" for k in keys)
                raise ConfigError(f"Cannot ensure weight tying when different token indices are specified for tied "
                                  f"layers. Conflicting layers: {info}. Please use the same indices for all tied "
                                  f"layers or set ensure_weight_tying=False. ({FIELD})")
            skipped = set(keys) & tied if not mismatch else set()
    wraps: dict[str, AuxiliaryWrap] = {}
    for name, ids in targets.items():
        if name in skipped:   # a tied module with the embedding's ids: it follows the embedding below
            continue
        paths = _paths_ending(graph, name)
        if not paths:
            raise TargetNotFoundError(f"Target modules {{{name!r}}} not found in the base model. Please check the "
                                      f"target modules and try again. ({FIELD} names {name!r}; give the path, or "
                                      f"the last part of the path, of an embedding layer)")
        for path in paths:
            wraps[path] = _wrap(site, path, ids)
    if ensure and not tied_model:
        warnings.warn("ensure_weight_tying=True but the model does not have tied weights (tie_word_embeddings=False). "
                      "Weight tying will not be applied for trainable_token_indices.", PeftWarning, stacklevel=4)
    embedding = input_embedding_path(model)
    if tied_model and embedding in wraps and (ensure or not mismatch):
        ids = wraps[embedding].params["token_indices"]
        for name in sorted(tied):
            for path in _paths_ending(graph, name):
                if path not in wraps:
                    wraps[path] = _wrap(site, path, ids, leader=embedding)
    return list(wraps.values())
