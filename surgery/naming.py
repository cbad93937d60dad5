"""Adapter names become attribute keys and folder names: refuse the ones that could do harm."""
from __future__ import annotations

import re

from .errors import AdapterNameError

BASE_NAME = "__base__"   # in adapter_names (one per sample): no adapter for this sample, the base model alone

_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
# Attribute names an adapter key would shadow on nn.Module / ModuleDict.
_RESERVED = frozenset({"base_layer", "original_module", "modules_to_save", "training", "forward", "state_dict",
                       "parameters", "modules", "children", "keys", "values", "items", "update", "pop", "clear",
                       "to", "type", "half", "float", "cuda", "cpu", "eval", "train"})


def validate_adapter_name(name) -> str:
    """Return `name` if it is safe as a ModuleDict key and a folder name; raise AdapterNameError otherwise."""
    if not isinstance(name, str) or not name:
        raise AdapterNameError(f"adapter_name = {name!r} is invalid: it must be a non-empty string")
    if not _SAFE.match(name) or len(name) > 128:
        raise AdapterNameError(
            f"adapter_name = {name!r} is invalid: use letters, digits, '_' and '-' only (no '/', '.', spaces or "
            f"absolute paths), at most 128 characters, e.g. 'default' or 'task_1'")
    if name in _RESERVED:
        raise AdapterNameError(f"adapter_name = {name!r} collides with a module attribute; choose another name")
    return name


class GenerationNames(tuple):
    """adapter_names (one per sample) given to generate(): generation repeats each sample k times (beams,
    returned sequences), so a layer that sees k times as many rows gives each sample's copies its adapter."""


def names_for_rows(batch_adapters: tuple, rows: int) -> tuple:
    """One adapter name per row of a batch of `rows` (see GenerationNames); a clear error otherwise."""
    if rows == len(batch_adapters):
        return batch_adapters
    if isinstance(batch_adapters, GenerationNames) and batch_adapters and rows % len(batch_adapters) == 0:
        copies = rows // len(batch_adapters)
        return tuple(name for name in batch_adapters for _ in range(copies))
    raise AdapterNameError(f"adapter_names has {len(batch_adapters)} entries but the batch has {rows} samples; "
                           f"give one adapter name (or {BASE_NAME!r}) per sample")
