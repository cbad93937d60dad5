"""Walk an nn.Module into a networkx DiGraph of facts, without running it.

Nodes are qualified module names ("" is the root); edges go parent -> child. Node facts:
  type (class name), module (the object), params (own parameter count), shapes ({name: shape}),
  layer_index (first numbered segment, PEFT's rule), tied_with (other modules sharing a parameter).
Graph fact: param_count (every parameter once; None when an adapter layer hid some from the walk).
The walk never descends into adapter layers' internals: an adapter layer is one node. Its cost is the model's
own modules, whatever the number of adapters (each adapter adds modules inside every layer it wraps, one entry
per adapter in each per-adapter container); base_modules also walks what adapter layers wrap, but not those.
"""
from __future__ import annotations

import re
from typing import Optional

import networkx as nx
from torch import nn

from ..quantized import stored_numel

_LAYER_INDEX = re.compile(r".*?\.[^.]*\.(?P<idx>\d+)\.")


def is_adapter_layer(module: nn.Module) -> bool:
    """Adapter layers mark their class with `_surgery_adapter_layer` (see methods/base_layer.py). Looked up on
    the class: a miss on the instance goes through nn.Module.__getattr__, ten times slower, once per module."""
    return getattr(type(module), "_surgery_adapter_layer", False)


def layer_index(fqn: str) -> Optional[int]:
    """The first numbered path segment after a named list, as PEFT reads it ('model.layers.3.mlp' -> 3)."""
    match = _LAYER_INDEX.match(fqn + ".")
    return int(match.group("idx")) if match else None


def iter_modules(model: nn.Module):
    """(fqn, module) pairs in named_modules order, not descending into adapter layers or their base."""
    stack = [("", model)]
    pop, extend = stack.pop, stack.extend
    while stack:
        name, module = pop()
        yield name, module
        if is_adapter_layer(module) or not module._modules:
            continue
        prefix = name + "." if name else ""
        extend(reversed([(prefix + child_name, child) for child_name, child in module._modules.items()
                         if child is not None]))


def all_modules(model: nn.Module):
    """Every module once, adapter internals included (model.modules() without its nested generators, which
    cost a frame per tree level for every module)."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield module
        stack.extend(child for child in module._modules.values() if child is not None)


_PER_ADAPTER: dict[type, frozenset[str]] = {}


def _per_adapter_names(module: nn.Module) -> frozenset[str]:
    cls = type(module)   # read on the class (nn.Module's __getattr__ makes an instance miss slow), once per class
    names = _PER_ADAPTER.get(cls)
    if names is None:
        names = _PER_ADAPTER[cls] = frozenset(getattr(cls, "adapter_layer_names", ())) | frozenset(
            getattr(cls, "other_param_names", ()))
    return names


def per_adapter_children(module: nn.Module) -> list[nn.Module]:
    """The module's per-adapter containers: the children its class names in adapter_layer_names /
    other_param_names (PEFT's attributes: the factors, dropouts, copies, ...), which hold one entry per adapter.
    Empty for a module that is not part of an adapter (dotted names name a child's child: not matched here)."""
    names = _per_adapter_names(module)
    return [child for name, child in module._modules.items() if child is not None and name in names] if names else []


def base_modules(model: nn.Module):
    """(fqn, module) as named_modules gives them (each module once, at its first path), except the per-adapter
    containers (per_adapter_children) and what is under them: the model's own modules, the adapter layers and
    what they wrap (a base layer, stacked layers, a wrapper's original or inner layer). Its cost does not
    depend on the number of adapters."""
    seen: set[int] = set()
    stack = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield name, module
        if not module._modules:
            continue
        skipped = _per_adapter_names(module)
        prefix = name + "." if name else ""
        stack.extend(reversed([(prefix + child_name, child) for child_name, child in module._modules.items()
                               if child is not None and child_name not in skipped]))


def visible_adapter_layers(model: nn.Module):
    """The adapter layers of base_modules(model): those in the model's own tree and those under them (stacked
    layers, a wrapper's inner layer): every layer an adapter being added can reach. Per-adapter parts are not
    searched (a layer inside a modules_to_save copy holds only the adapters there were when it was copied)."""
    return (module for _, module in base_modules(model) if is_adapter_layer(module))


def module_graph(model: nn.Module) -> nx.DiGraph:
    """The module tree as a DiGraph with node facts; cheap enough for a 70B meta model."""
    nodes, edges = [], []
    owners: dict[int, list[str]] = {}
    numels: dict[int, int] = {}
    whole = True   # False once an adapter layer hides parameters from this walk
    indexes: dict[str, Optional[int]] = {"": None}
    for name, module in iter_modules(model):
        params = [(p_name, p) for p_name, p in module._parameters.items() if p is not None]
        for _, p in params:
            owners.setdefault(id(p), []).append(name)
            numels[id(p)] = stored_numel(p)
        whole = whole and not is_adapter_layer(module)
        parent, _, last = name.rpartition(".")
        # A new layer index can only appear at a numbered segment; elsewhere a module has its parent's.
        indexes[name] = (layer_index(name) if last.isdigit() else indexes[parent]) if name else None
        nodes.append((name, {"type": type(module).__name__, "module": module,
                             "params": sum(stored_numel(p) for _, p in params), "shapes": {k: tuple(p.shape) for k, p in params},
                             "layer_index": indexes[name], "tied_with": ()}))
        if name:
            edges.append((parent, name))
    # Graph facts: every parameter once (shared ones once), when no adapter layer hid any from the walk.
    graph = nx.DiGraph(param_count=sum(numels.values()) if whole else None)
    graph.add_nodes_from(nodes)
    graph.add_edges_from(edges)
    for names in owners.values():
        if len(names) > 1:
            for name in names:
                graph.nodes[name]["tied_with"] = tuple(n for n in names if n != name)
    return graph
