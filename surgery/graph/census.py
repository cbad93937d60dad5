"""Every parameter of a model once, counted without walking what did not change since the last count.

    parameter_total(model) = sum over unique parameters of stored_numel  (PEFT's get_nb_trainable_parameters)

Each adapter adds one entry per layer it wraps to that layer's per-adapter containers (<factor>.<name>,
modules_to_save.<name>, ...), so a plain walk costs more with every adapter: on a 4-layer model with 100
adapters it is most of an add_adapter. Here the base model's modules (graph.walk.base_modules, whose number
does not depend on the adapters) are walked each time, and the containers' parameters are remembered per model:

  * a container with the entries counted last time, maybe with new ones after them (adding an adapter
    appends; checked on its entry counts and the last entry counted): only the new entries are counted;
  * a new container (a layer wrapped since): counted whole;
  * anything else (an entry removed or replaced at the end, a container gone): everything is counted again.

Parameters are remembered by weak reference (a deleted adapter is not kept alive here, and a dead parameter's
id reused by a new one is not mistaken for it). What is not seen: an entry replaced in the middle of a
container, or a parameter replaced inside an entry, by one of *another size* (replacements that keep the size,
such as dtype casts and checkpoint loads, leave the count right). Code that resizes adapters in place calls
`forget(model)`.
"""
from __future__ import annotations

import weakref
from itertools import islice

from torch import nn

from ..quantized import stored_numel
from .walk import all_modules, base_modules, per_adapter_children

_PLAIN = nn.Parameter


class _Seen:
    """One container as last counted: how many entries (modules, parameters) and the last of each."""

    __slots__ = ("container", "modules", "params", "last_module", "last_param")

    def __init__(self, container: nn.Module) -> None:
        self.container = weakref.ref(container)
        self.modules, self.params = len(container._modules), len(container._parameters)
        self.last_module = _last(container._modules)
        self.last_param = _last(container._parameters)


class _Counts:
    """A model's containers as last counted and {id(parameter): (weak reference, stored count)} of theirs."""

    __slots__ = ("seen", "params", "total", "__weakref__")

    def __init__(self) -> None:
        self.seen: dict[int, _Seen] = {}
        self.params: dict[int, tuple[weakref.ref, int]] = {}
        self.total = 0

    def add(self, param) -> None:
        known = self.params.get(id(param))
        if known is not None and known[0]() is param:
            return   # shared with an entry counted before (tied factors, tied copies)
        count = _numel(param)
        self.params[id(param)] = (weakref.ref(param), count)
        self.total += count

    def holds(self, param) -> bool:
        known = self.params.get(id(param))
        return known is not None and known[0]() is param


_COUNTS: "weakref.WeakKeyDictionary[nn.Module, _Counts]" = weakref.WeakKeyDictionary()


def _numel(param) -> int:
    # plain parameters skip the quantized backends' checks, which cost more than the rest of the count
    return param.numel() if type(param) is _PLAIN else stored_numel(param)


def _last(entries: dict):
    """A weak reference to the dict's last value (None when empty or None)."""
    if not entries:
        return None
    value = next(reversed(entries.values()))
    return weakref.ref(value) if value is not None else None


def _same(ref, value) -> bool:
    return (ref is None and value is None) or (ref is not None and ref() is value and value is not None)


def _count_under(module: nn.Module, counts: _Counts) -> None:
    """Count every parameter of `module` and its submodules (each module once)."""
    for m in all_modules(module):
        for p in m._parameters.values():
            if p is not None:
                counts.add(p)


def _tail(entries: dict, start: int) -> list:
    """The dict's values from position `start` on, read from the end: the cost is the new entries', not the
    container's (a forward skip over 100 entries per container would grow with the adapters again)."""
    return list(islice(reversed(entries.values()), len(entries) - start))[::-1]


def _count_from(container: nn.Module, counts: _Counts, modules: int = 0, params: int = 0) -> None:
    """Count the container's entries from these positions on (0, 0: all of it)."""
    for module in _tail(container._modules, modules):
        if module is not None:
            _count_under(module, counts)
    for param in _tail(container._parameters, params):
        if param is not None:
            counts.add(param)
    counts.seen[id(container)] = _Seen(container)


def _grown(seen: _Seen, container: nn.Module) -> bool:
    """Whether the container holds what `seen` counted, maybe with entries appended after it."""
    for entries, counted, last in ((container._modules, seen.modules, seen.last_module),
                                   (container._parameters, seen.params, seen.last_param)):
        if len(entries) < counted:
            return False
        at = next(islice(reversed(entries.values()), len(entries) - counted, None)) if counted else None
        if counted and not _same(last, at):
            return False
    return True


def _update(counts: _Counts, containers: list[nn.Module]) -> bool:
    """Bring `counts` up to date with these containers; False when only a full count can."""
    present = {id(c) for c in containers}
    if any(key not in present for key in counts.seen):
        return False   # a container is gone (a layer unwrapped): its parameters must leave the total
    for container in containers:
        seen = counts.seen.get(id(container))
        if seen is None:
            _count_from(container, counts)
        elif seen.container() is not container:
            return False   # another container under a dead one's id: the dead one's parameters are counted
        elif len(container._modules) != seen.modules or len(container._parameters) != seen.params \
                or not _same(seen.last_module, _last_value(container._modules)) \
                or not _same(seen.last_param, _last_value(container._parameters)):
            if not _grown(seen, container):
                return False
            _count_from(container, counts, seen.modules, seen.params)
    return True


def _last_value(entries: dict):
    return next(reversed(entries.values())) if entries else None


def forget(model: nn.Module) -> None:
    """Count `model` afresh next time (after code resized parameters inside its adapters in place)."""
    _COUNTS.pop(model, None)


def parameter_total(model: nn.Module) -> int:
    """Every parameter of `model` once (shared ones once), counted as PEFT counts them (stored_numel: 4-bit
    weights unpacked); the same number as summing over model.parameters()."""
    base, containers = [], []
    for _, module in base_modules(model):
        base.extend(p for p in module._parameters.values() if p is not None)
        containers.extend(per_adapter_children(module))
    counts = _COUNTS.get(model)
    if counts is None or not _update(counts, containers):
        counts = _COUNTS[model] = _Counts()
        for container in containers:
            _count_from(container, counts)
    extra, seen = 0, set()
    for p in base:   # the base's own parameters, those no container shares
        if id(p) not in seen and not counts.holds(p):
            seen.add(id(p))
            extra += _numel(p)
    return counts.total + extra
