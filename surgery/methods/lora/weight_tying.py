"""ensure_weight_tying: keep a tied embedding / output head tied when the adapter trains one of them (PEFT 0.21.2).

Which modules are tied to the input embedding is PEFT's rule (graph/embedding_ties.py).

With ensure_weight_tying=True and a tied model, the config is rewritten as PEFT rewrites it:
  modules_to_save names embed_tokens or lm_head   the input embedding is added, the tied modules removed; they
                                                  get copies sharing the embedding's copy (config.modules_to_tie)
  target_modules names embed_tokens or lm_head     the input embedding is added (a regex: OR-ed in), the tied
                                                  modules removed; their LoRA shares the embedding's factors
                                                  (config.target_modules_to_tie, tied_factors.py)
and PEFT's warnings are given where it gives them (no tie found, nothing tied, a tie left to split).
trainable_token_indices ties are planned with the rows (token_indices.py).
"""
from __future__ import annotations

import re
import warnings

from torch import nn

from ...errors import PeftWarning, PlanError
from ...graph.embedding_ties import input_embedding_path, names_embedding, targets_embedding, tied_with_input_embedding
from ...matching.selectors import pattern_value

TIE_INITS = (True, False, "gaussian")                  # inits that leave the base weight alone

SPLIT_WARNING = ("Model has `tie_word_embeddings=True` and a tied layer is part of the adapter, but "
                 "`ensure_weight_tying` is not set to True. This can lead to complications, for example when merging "
                 "the adapter or converting your model to formats other than safetensors. Check the discussion "
                 "here: https://github.com/huggingface/peft/issues/2777")

__all__ = ["input_embedding_path", "model_ties_weights", "resolve_weight_tying", "tied_modules",
           "tied_with_input_embedding"]


def _warn(message: str) -> None:
    warnings.warn(message, PeftWarning, stacklevel=4)


def model_ties_weights(model: nn.Module) -> bool:
    """PEFT's `weights_tied`: the model config's tie_word_embeddings (False without a config)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return False
    return bool(config.to_dict().get("tie_word_embeddings", False))


def _drop_tied(names: list, tied: list[str]) -> list:
    """PEFT's rule: for each tied module, the first entry that selects it is removed."""
    names = list(names)
    for key in tied:
        for entry in names:
            try:
                hit = re.match(rf"(^|.*\.){entry}($|\..*)", key)
            except re.error:
                hit = None
            if hit:
                names.remove(entry)
                break
    return names


def resolve_weight_tying(config, model: nn.Module) -> None:
    """PEFT's _check_tied_modules: rewrite config.modules_to_save / target_modules for ensure_weight_tying, and warn
    where PEFT warns. Runs on the planner's own copy of the config."""
    saved = list(config.modules_to_save or [])
    in_saved, in_targets = names_embedding(saved), targets_embedding(config.target_modules)
    tied = tied_with_input_embedding(model)
    if not config.ensure_weight_tying:
        if (in_saved or in_targets) and tied:
            _warn(SPLIT_WARNING)
        return
    if not tied:
        _warn("You have requested `ensure_weight_tying`, but no tied modules were found in the model")
        return
    if not (in_saved or in_targets):
        _warn("You have requested `ensure_weight_tying`, but no tied modules are added in either `modules_to_save` "
              "or `target_modules`")
        return
    embedding = input_embedding_path(model) or ""
    if in_saved:
        config.modules_to_tie = set(tied)
        config.modules_to_save = _drop_tied(saved + ([embedding] if embedding not in saved else []), tied)
        return
    config.target_modules_to_tie = set(tied)
    if isinstance(config.target_modules, str):   # a regex: the input embedding OR-ed in, as PEFT
        config.target_modules = rf"(?:{config.target_modules}|^{re.escape(embedding)}$)"
        return
    config.target_modules = set(_drop_tied(sorted(set(config.target_modules or ()) | {embedding}), tied))


def _selected_by(names: set, path: str) -> bool:
    return path in names or any(path.endswith(f".{name}") for name in names)


def tied_modules(model: nn.Module, graph, config) -> dict[str, str]:
    """{follower path: input embedding path} for the ties resolve_weight_tying recorded (MethodSpec.tied_modules)."""
    to_tie = getattr(config, "target_modules_to_tie", None) or getattr(config, "modules_to_tie", None)
    if not to_tie:
        return {}
    leader = input_embedding_path(model)
    followers = {path: leader for path in graph.nodes if path and path != leader and _selected_by(set(to_tie), path)}
    if getattr(config, "target_modules_to_tie", None):
        for path in followers:
            _check_tied_adapter(config, path, leader)
    return followers


def _check_tied_adapter(config, follower: str, leader: str) -> None:
    """A tied LoRA is the leader's factors seen again: same rank and scaling, no base-rewriting init, no DoRA."""
    for field in ("r", "lora_alpha"):
        pattern = config.rank_pattern if field == "r" else config.alpha_pattern
        mine, theirs = (pattern_value(pattern, p, getattr(config, field)) for p in (follower, leader))
        if mine != theirs:
            raise PlanError(f"ensure_weight_tying ties {follower!r}'s LoRA to {leader!r}'s, but their {field} differ "
                            f"({mine} vs {theirs}, from {field.replace('lora_', '')}_pattern): a tied adapter is one "
                            f"set of factors; give both the same {field}")
    if config.init_lora_weights not in TIE_INITS:
        raise PlanError(f"ensure_weight_tying with init_lora_weights={config.init_lora_weights!r}: that init rewrites "
                        f"the base weight, which {follower!r} and {leader!r} share; use True, False or 'gaussian', or "
                        f"ensure_weight_tying=False")
    if config.use_dora:
        raise PlanError(f"ensure_weight_tying with use_dora=True: {follower!r} and {leader!r} would each scale the "
                        f"one shared weight by their own magnitude; use plain LoRA for a tied pair, or "
                        f"ensure_weight_tying=False")
