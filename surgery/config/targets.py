"""Checks of the targeting fields every adapter-wrapping config shares (PEFT's names):

  target_modules, exclude_modules   names (exact or '.'-suffix) or one full-match regex
  layers_to_transform, layers_pattern
  modules_to_save
  rank_pattern, alpha_pattern       {name or regex: value}

A config calls `check_targeting(self)` from its validate(); fields it does not have are skipped. Each regex is
compiled in the form the matcher embeds it in, so a pattern that would fail at plan time fails here.
"""
from __future__ import annotations

import re
from dataclasses import field
from typing import Optional

from ..errors import ConfigError
from .validation import check_range


_HELP = {
    "target_modules": "Names (exact or '.'-suffix), a full-match regex, or 'all-linear'.",
    "exclude_modules": "Names or regex of modules never to adapt.",
    "layers_to_transform": "Only adapt these layer indices.",
    "layers_pattern": "Name of the layer list (e.g. 'layers', 'h') for layers_to_transform.",
    "modules_to_save": "Modules trained in full and saved with the adapter.",
}


def targeting_field(name: str):
    """The dataclass field of one of the shared targeting fields: PEFT's default (None) and one help text."""
    return field(default=None, metadata={"help": _HELP[name]})


def check_targeting(config) -> None:
    name = type(config).__name__
    target = getattr(config, "target_modules", None)
    layers = getattr(config, "layers_to_transform", None)
    pattern = getattr(config, "layers_pattern", None)
    # PEFT's words first (code matches on them), then the values and what to do
    if isinstance(target, str) and layers is not None:
        raise ConfigError(f"`layers_to_transform` cannot be used when `target_modules` is a str. "
                          f"({name}.layers_to_transform = {layers!r}, target_modules = {target!r}, a regex: "
                          f"list module names instead)")
    if isinstance(target, str) and pattern:
        raise ConfigError(f"`layers_pattern` cannot be used when `target_modules` is a str. "
                          f"({name}.layers_pattern = {pattern!r}, target_modules = {target!r}, a regex: "
                          f"list module names instead)")
    if pattern and layers is None:
        raise ConfigError(f"When `layers_pattern` is specified, `layers_to_transform` must also be specified. "
                          f"({name}.layers_pattern = {pattern!r})")
    if isinstance(layers, int):
        check_range(name, "layers_to_transform", layers, low=0)
    elif layers:
        for index in layers:
            check_range(name, "layers_to_transform[...]", index, low=0)
    # target_modules=[] is accepted, as PEFT (a config filled in later); planning it is a TargetNotFoundError
    for key in ("target_modules", "exclude_modules"):
        value = getattr(config, key, None)
        if isinstance(value, str):
            compile_pattern(name, key, value)
    for key in ("rank_pattern", "alpha_pattern"):
        for key_pattern, value in (getattr(config, key, None) or {}).items():
            compile_pattern(name, f"{key} key", key_pattern, rf"(.*\.)?({key_pattern})$")
            check_range(name, f"{key}[{key_pattern!r}]", value, low=0, low_open=True)
    for module in getattr(config, "modules_to_save", None) or []:
        compile_pattern(name, "modules_to_save", module, rf"(?:^|.*\.){module}(?:$|\..*)")
    patterns = [pattern] if isinstance(pattern, str) else pattern or []
    for layer_pattern in patterns:
        compile_pattern(name, "layers_pattern", layer_pattern, rf"(?:^|.*?\.){layer_pattern}\.(?P<idx>\d+)\.")


def compile_pattern(owner: str, key: str, pattern: str, embedded: Optional[str] = None) -> None:
    try:
        re.compile(pattern if embedded is None else embedded)
    except re.error as exc:
        raise ConfigError(f"{owner}.{key} = {pattern!r} is not a valid regular expression: {exc}") from None


def union_of_targets(values: list):
    """The targets of several adapters as one (PEFT's rule for combined adapters): regexes joined as
    alternatives "(a)|(b)", name lists united (kept a list, first adapter's names first). All `values` must be
    of one kind (the caller says how to word that error)."""
    if isinstance(values[0], str):
        return "|".join(f"({value})" for value in values)
    if all(isinstance(value, (list, set, tuple)) for value in values):
        return list(dict.fromkeys(name for value in values
                                  for name in (sorted(value) if isinstance(value, set) else value)))
    raise TypeError(f"Invalid type {type(values[0])} found in target_modules")
