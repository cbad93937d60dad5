"""Compile a config's targeting fields into an ordered rule and match it over the module graph.

The fields are the ones every PEFT tuner config shares (a config may lack some): target_modules,
exclude_modules, modules_to_save, layers_to_transform, layers_pattern, plus surgery's target_types.
Precedence (as PEFT): exclude_modules > modules_to_save > target (names | regex | all-linear | types)
> layers_to_transform. A matched module is not descended into; adapter internals are never visited.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import networkx as nx
from torch import nn

from ..errors import PeftWarning, TargetNotFoundError, closest
from .selectors import AllLinear, Layers, Names, Regex, Types, output_head_names

ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class Rule:
    """One compiled rule: which modules a config adapts."""

    target: Optional[Callable]
    types: Optional[Types]
    excludes: tuple = ()
    layers: Optional[Layers] = None

    def describe(self) -> str:
        parts = [s.describe() for s in (self.target, self.types, self.layers) if s is not None]
        parts += [f"not {s.describe()}" for s in self.excludes]
        return "; ".join(parts)


def compile_rule(config, model: nn.Module) -> Rule:
    """The Rule for a config's targeting fields."""
    target_modules = getattr(config, "target_modules", None)
    target = _target_selector(target_modules, model, config.task_type)
    target_types = getattr(config, "target_types", None)
    types = Types(tuple(target_types)) if target_types else None
    excludes = []
    if getattr(config, "exclude_modules", None):
        excludes.append(_names_or_regex(config.exclude_modules))
    saved = getattr(config, "modules_to_save", None)
    if saved:
        excludes.append(Regex("|".join(rf"(?:^|.*\.){m}(?:$|\..*)" for m in saved)))
    layers = None
    indexes = getattr(config, "layers_to_transform", None)
    if indexes is not None and not isinstance(target_modules, str):
        indexes = (indexes,) if isinstance(indexes, int) else tuple(indexes)
        patterns = getattr(config, "layers_pattern", None) or ()
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        layers = Layers(indexes, patterns)
    return Rule(target, types, tuple(excludes), layers)


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


def match_rule(graph: nx.DiGraph, rule: Rule, *, strict: bool = True, allow_empty: bool = False) -> list[str]:
    """The qualified names of the modules the rule selects, in module order.

    Matching nothing at all is an error (TargetNotFoundError, with close names), unless `allow_empty` (the
    config adapts parameters too, and those matched). strict: a target name that selects nothing while others
    do warns; non-strict (loading a saved adapter, whose list was checked when it was trained) it is quiet.
    """
    matches: list[str] = []
    skip_under: Optional[str] = None
    seen_names: set[str] = set()
    for fqn in nx.dfs_preorder_nodes(graph, ""):
        if skip_under is not None and fqn.startswith(skip_under):
            continue
        skip_under = None
        if not fqn:
            continue
        if not _selected(rule, fqn, graph.nodes[fqn], seen_names):
            continue
        matches.append(fqn)
        skip_under = fqn + "."  # a module to be replaced is not descended into
    if matches or not allow_empty:
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
    """No match at all is an error. Names that match nothing while others match warn (as PEFT, which accepts
    target lists shared across architectures); both name each one with the closest module names."""
    leaf_names = _candidate_names(graph)
    missing = [n for n in rule.target.names if n not in seen_names] if isinstance(rule.target, Names) else []
    hints = []
    for name in missing:
        near = closest(name.rpartition(".")[2], leaf_names)
        hints.append(f"{name!r}" + (f" (did you mean {', '.join(map(repr, near))}?)" if near else ""))
    if not matches:
        what = f"target_modules: {', '.join(hints)} matched" if hints else \
            f"the rule ({rule.describe() or 'no target_modules and no target_types'}) matched"
        names_nothing = rule.types is None and (rule.target is None or rule.target == Names(()))
        if names_nothing:   # PEFT's words first (an empty target list, nothing else to adapt)
            what = ("No `target_modules` passed but also no `target_parameters` found. Please check the values for "
                    "these arguments. (target_modules names nothing, so it matched")
        raise TargetNotFoundError(f"{what} no module of the model{')' if names_nothing else ''}; module names here "
                                  f"include: "
                                  f"{', '.join(leaf_names[:25])}")
    if hints and strict:
        warnings.warn(f"target_modules: {', '.join(hints)} matched no module of the model; adapting the "
                      f"{len(matches)} module(s) the other names matched", PeftWarning, stacklevel=2)


def _candidate_names(graph) -> list[str]:
    """Distinct leaf names worth suggesting: those of modules holding parameters first (the layers a method
    adapts), never bare list indexes."""
    layer_names = {fqn.rpartition(".")[2] for fqn, node in graph.nodes(data=True) if fqn and node["params"]}
    other = {fqn.rpartition(".")[2] for fqn in graph.nodes if fqn} - layer_names
    return sorted(n for n in layer_names if not n.isdigit()) + sorted(n for n in other if not n.isdigit())
