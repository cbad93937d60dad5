"""Value checks of LoraConfig's structural options, run on construction (what needs the model waits for the plan).

  trainable_token_indices   [ids] (the input embedding) or {module name: [ids]}: non-negative ints, each once
  layer_replication         [[start, end), ...]: pairs of ints with 0 <= start < end (the layer count is the plan's)
  ensure_weight_tying       a bool (the type check covers it)

Each refusal names the field, the value and what would be valid.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from ...errors import ConfigError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_ids(owner: str, where: str, ids: Any) -> None:
    if not isinstance(ids, (list, tuple)) or not all(_is_int(i) for i in ids):
        raise ConfigError(f"{owner}.{where} = {ids!r}: expected a list of token ids (ints), e.g. [32000, 32001]")
    if not ids:
        raise ConfigError(f"{owner}.{where} = []: selects no token; give the ids of the tokens to train, "
                          f"e.g. [32000, 32001], or leave trainable_token_indices unset")
    negative = sorted(i for i in ids if i < 0)
    if negative:
        raise ConfigError(f"{owner}.{where} = {ids!r}: token ids {negative} are negative; ids are embedding rows, "
                          f"0 or more")
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise ConfigError(f"{owner}.{where} = {ids!r} repeats {repeated}: one trainable row per token; list each "
                          f"id once")


def check_trainable_token_indices(owner: str, value: Any) -> None:
    """None, a list of ids (for the input embedding) or {module name: ids}."""
    if value is None:
        return
    field = "trainable_token_indices"
    if isinstance(value, dict):
        if not value:
            raise ConfigError(f"{owner}.{field} = {{}} names no embedding; give {{module name: [ids]}}, a list of "
                              f"ids for the input embedding, or None")
        for name, ids in value.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{owner}.{field} = {value!r}: key {name!r} is not a module name; keys name "
                                  f"embedding layers, e.g. 'embed_tokens'")
            _check_ids(owner, f"{field}[{name!r}]", ids)
        return
    _check_ids(owner, field, value)


def check_layer_replication(owner: str, value: Any) -> None:
    """None, or a list of [start, end) layer ranges: pairs of ints, 0 <= start < end."""
    if value is None:
        return
    field = "layer_replication"
    example = "e.g. [[0, 4], [2, 5]] stacks layers 0-3 then 2-4"
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{owner}.{field} = {value!r}: expected a list of [start, end) layer ranges, {example}")
    for entry in value:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(_is_int(v) for v in entry)):
            raise ConfigError(f"{owner}.{field} = {value!r}: entry {entry!r} is not a [start, end) pair of layer "
                              f"indices; {example}")
        start, end = entry
        if start < 0 or end <= start:
            raise ConfigError(f"{owner}.{field} = {value!r}: range {list(entry)!r} is empty or negative; each range "
                              f"[start, end) needs 0 <= start < end (end exclusive), {example}")
