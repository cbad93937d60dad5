"""Compile a method config into an ordered rule and match it over the module graph.

Precedence (as PEFT): exclude_modules > modules_to_save > target (names | regex | all-linear | types)
> layers_to_transform. A matched module is not descended into; adapter internals are never visited.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

import networkx as nx
from torch import nn

from ..errors import TargetNotFoundError, closest
from .selectors import AllLinear, Layers, Names, Regex, Types, output_head_names, pattern_key

logger = logging.getLogger(__name__)
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class Match:
    fqn: str
    rank: int
    alpha: float


@dataclass(frozen=True)
class Rule:
    """One compiled rule: which modules a config adapts, and with which rank and alpha."""

    target: Optional[Callable]
    types: Optional[Types]
    excludes: tuple = ()
    layers: Optional[Layers] = None
    rank: int = 8
    alpha: float = 8
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)

    def describe(self) -> str:
        parts = [s.describe() for s in (self.target, self.types, self.layers) if s is not None]
        parts += [f"not {s.describe()}" for s in self.excludes]
        return "; ".join(parts)


def compile_rule(config, model: nn.Module) -> Rule:
    """The Rule for a LoRA-family config (target_modules, exclude_modules, layers, patterns, types)."""
    target = _target_selector(config.target_modules, model, config.task_type)
    types = Types(tuple(config.target_types)) if getattr(config, "target_types", None) else None
    excludes = []
    if config.exclude_modules:
        excludes.append(_names_or_regex(config.exclude_modules))
    if config.modules_to_save:
        excludes.append(Regex("|".join(rf"(?:^|.*\.){m}(?:$|\..*)" for m in config.modules_to_save)))
    layers = None
    if config.layers_to_transform is not None and not isinstance(config.target_modules, str):
        indexes = config.layers_to_transform
        indexes = (indexes,) if isinstance(indexes, int) else tuple(indexes)
        patterns = config.layers_pattern or ()
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        layers = Layers(indexes, patterns)
    return Rule(target, types, tuple(excludes), layers, config.r, config.lora_alpha,
                dict(config.rank_pattern or {}), dict(config.alpha_pattern or {}))


def _target_selector(target_modules, model: nn.Module, task_type):
    if target_modules is None:
        return None
    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        return AllLinear(output_head_names(model, task_type))
    if isinstance(target_modules, (list, tuple, set)) and [t.lower() for t in target_modules] == [ALL_LINEAR]:
        return AllLinear(output_head_names(model, task_type))
    return _names_or_regex(target_modules)


def _names_or_regex(value):
    return Regex(value) if isinstance(value, str) else Names(tuple(value))


def match_rule(graph: nx.DiGraph, rule: Rule, *, strict: bool = True) -> list[Match]:
    """The modules the rule selects, in module order, with resolved rank and alpha.

    strict: every target name must select something (else TargetNotFoundError listing close names);
    non-strict (loading a saved adapter): only an empty overall match is an error.
    """
    matches: list[Match] = []
    skip_under: Optional[str] = None
    seen_names: set[str] = set()
    for fqn in nx.dfs_preorder_nodes(graph, ""):
        if skip_under is not None and fqn.startswith(skip_under):
            continue
        skip_under = None
        if not fqn:
            continue
        node = graph.nodes[fqn]
        if not _selected(rule, fqn, node, seen_names):
            continue
        rank = rule.rank_pattern.get(pattern_key(rule.rank_pattern, fqn), rule.rank)
        alpha = rule.alpha_pattern.get(pattern_key(rule.alpha_pattern, fqn), rule.alpha)
        matches.append(Match(fqn, rank, alpha))
        skip_under = fqn + "."  # a module to be replaced is not descended into
    _check_found(graph, rule, matches, seen_names, strict)
    return matches


def _selected(rule: Rule, fqn: str, node: dict, seen_names: set[str]) -> bool:
    if rule.target is not None:
        if not rule.target(fqn, node):
            return False
        if isinstance(rule.target, Names):  # the name exists, even if excluded below
            seen_names.update(n for n in rule.target.names if fqn == n or fqn.endswith("." + n))
    if any(ex(fqn, node) for ex in rule.excludes):
        return False
    if rule.types is not None and not rule.types(fqn, node):
        return False
    if rule.target is None and rule.types is None:
        return False
    if rule.layers is not None and not rule.layers(fqn, node):
        # PEFT: a target naming the module exactly is taken whatever its layer; only suffixes are filtered
        return isinstance(rule.target, Names) and fqn in rule.target.names
    return True


def _check_found(graph, rule: Rule, matches, seen_names, strict: bool) -> None:
    leaf_names = _candidate_names(graph)
    if isinstance(rule.target, Names):
        missing = [n for n in rule.target.names if n not in seen_names]
        if missing and (strict or not matches):
            hints = []
            for name in missing:
                near = closest(name.rpartition(".")[2], leaf_names)
                hints.append(f"{name!r}" + (f" (did you mean {', '.join(map(repr, near))}?)" if near else ""))
            raise TargetNotFoundError(
                f"target_modules: {', '.join(hints)} matched no module of the model "
                f"({rule.describe()}); module names here include: {', '.join(leaf_names[:25])}")
        if missing:
            logger.warning("target_modules %s matched no module; adapting the %d that matched", missing, len(matches))
    if not matches:
        what = rule.describe() or "no target_modules and no target_types"
        raise TargetNotFoundError(
            f"the rule ({what}) matched no module of the model; module names here include: "
            f"{', '.join(leaf_names[:25])}")


_LAYER_TYPES = ("Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d", "Conv3d")


def _candidate_names(graph) -> list[str]:
    """Distinct leaf names worth suggesting: those of adaptable layers first, never bare list indexes."""
    layer_names = {fqn.rpartition(".")[2] for fqn, node in graph.nodes(data=True)
                   if fqn and any(t in node["type"] for t in _LAYER_TYPES)}
    other = {fqn.rpartition(".")[2] for fqn in graph.nodes if fqn} - layer_names
    return sorted(n for n in layer_names if not n.isdigit()) + sorted(n for n in other if not n.isdigit())
