"""The trainable flags after adding one adapter, set without visiting every other adapter.

mark_trainable sets every flag of the model: the base frozen, then set_adapter(active) on every adapter layer,
which walks all of each layer's adapters. Done on every add_adapter, that is most of the call once a model holds
dozens of adapters (PEFT's add_adapter grows the same way, peft#981). When the model is still as
mark_trainable(active, trainable) left it (trainable.marked_state), the same flags follow from much less:

  * a layer the plan built holds only the new adapter: the full rule on that layer alone (freeze, set_adapter);
  * a layer given one more adapter: that adapter's entries frozen (it is not active); the layer's active list
    is what set_adapter would make it, or the full rule runs on that layer;
  * the base model (graph.walk.base_modules: not the adapters' own parts) frozen again, as mark_trainable does;
  * every adapter layer checked cheaply against the recorded state: not switched off, its active adapters the
    ones set_adapter(active) gives, their parameters' flags `trainable`. A layer that differs (flags changed
    by code surgery did not see) makes the whole model go through mark_trainable.

Anything else (bias modes other than "none", an active new adapter, no recorded state) is mark_trainable.
Not checked, as that would visit every adapter again: the flags of most *inactive* adapters' parameters (the
first and last of each container are, which catches a model unfrozen whole). One adapter set trainable by hand
(not through set_requires_grad, which voids the record) stays so here, where mark_trainable would reset it.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..graph.walk import base_modules, is_adapter_layer, per_adapter_children
from .trainable import freeze_under, mark_trainable, marked_state


def mark_added(model: nn.Module, config, active: list[str], paths: list[str], adapter_name: str,
               built: list[nn.Module], extended: list[nn.Module]) -> None:
    """The flags mark_trainable(model, config, active, paths) would leave, after adapter `adapter_name` was added:
    `built` are the layers (and wrappers) the plan created, `extended` the existing ones it gave the adapter."""
    trainable = not config.inference_mode
    if ((getattr(config, "bias", "none") or "none") != "none" or adapter_name in active
            or not marked_state(model, active, trainable)):
        mark_trainable(model, config, active, paths)
        return
    for layer in built:
        _full_rule(layer, active, trainable)
    for layer in extended:
        for inner in _layers_under(layer):
            for container in per_adapter_children(inner):
                _freeze_entry(container, adapter_name)
        if list(layer.active_adapters) != _expected_active(layer, active):   # the add made it active there
            _full_rule(layer, active, trainable)
    for _, module in base_modules(model):
        for p in module._parameters.values():
            if p is not None and p.requires_grad:
                p.requires_grad_(False)
        if is_adapter_layer(module) and not _as_marked(module, active, trainable):
            mark_trainable(model, config, active, paths)
            return


def _full_rule(layer: nn.Module, active: list[str], trainable: bool) -> None:
    """mark_trainable's rule on one layer's subtree."""
    for inner in freeze_under(layer):
        inner.set_adapter(active, trainable=trainable)


def _layers_under(layer: nn.Module) -> list[nn.Module]:
    """The layer and the modules under it with per-adapter containers (stacked layers, a wrapper's inner
    layer), not searching those containers."""
    return [m for _, m in base_modules(layer) if per_adapter_children(m)]


def _freeze_entry(container: nn.Module, adapter_name: str) -> None:
    """Freeze one adapter's entry of a per-adapter container (a ParameterDict's or a ModuleDict's)."""
    param = container._parameters.get(adapter_name)
    if param is not None:
        param.requires_grad_(False)
    entry = container._modules.get(adapter_name)
    if entry is not None:
        freeze_under(entry)


def _containers(layer: nn.Module) -> list[nn.Module]:
    """The layer's per-adapter containers (PEFT's adapter_layer_names, maybe dotted), those that exist; lazily
    created ones are read through `_modules`, so looking does not create them."""
    found = []
    for path in getattr(type(layer), "adapter_layer_names", ()):
        holder: Optional[nn.Module] = layer
        for part in path.split("."):
            holder = holder._modules.get(part) if holder is not None else None
        if holder is not None:
            found.append(holder)
    return found


def _expected_active(layer: nn.Module, active: list[str]) -> list[str]:
    """What set_adapter(active) leaves as the layer's active adapters: those of `active` it holds."""
    containers = _containers(layer)
    return [n for n in active if any(n in holder for holder in containers)]


def _entry_params(holder: nn.Module, name: str) -> list:
    param = holder._parameters.get(name)
    if param is not None:
        return [param]
    entry = holder._modules.get(name)
    return [] if entry is None else list(entry.parameters())


def _as_marked(layer: nn.Module, active: list[str], trainable: bool) -> bool:
    """Whether the layer looks as mark_trainable(active, trainable) leaves it: adapters on, the active list
    set_adapter gives, the active adapters' parameters (all of each entry) requiring grad iff `trainable`."""
    if getattr(layer, "_disable_adapters", False):
        return False
    names = _expected_active(layer, active)
    if list(layer.active_adapters) != names:
        return False
    containers = _containers(layer)
    if not all(p.requires_grad == trainable for holder in containers for n in names for p in _entry_params(holder, n)):
        return False
    # inactive ones: the first and the last of each container only (a model unfrozen whole by hand shows there)
    return not any(p.requires_grad for holder in containers for n in _ends(holder) if n not in names
                   for p in _entry_params(holder, n))


def _ends(holder: nn.Module) -> set[str]:
    """The first and last adapter names of a container, read without listing the others."""
    ends = set()
    for entries in (holder._modules, holder._parameters):
        if entries:
            ends.update((next(iter(entries)), next(reversed(entries))))
    return ends
