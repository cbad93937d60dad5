"""Walk an nn.Module into a networkx DiGraph of facts, without running it.

Nodes are qualified module names ("" is the root); edges go parent -> child. Node facts:
  type (class name), module (the object), params (own parameter count), shapes ({name: shape}),
  layer_index (first numbered segment, PEFT's rule), tied_with (other modules sharing a parameter).
The walk never descends into adapter layers' internals: an adapter layer is one node.
"""
from __future__ import annotations

import re
from typing import Optional

import networkx as nx
from torch import nn

_LAYER_INDEX = re.compile(r".*?\.[^.]*\.(?P<idx>\d+)\.")


def is_adapter_layer(module: nn.Module) -> bool:
    """Adapter layers mark themselves with `_surgery_adapter_layer` (see methods/base_layer.py)."""
    return getattr(module, "_surgery_adapter_layer", False)


def layer_index(fqn: str) -> Optional[int]:
    """The first numbered path segment after a named list, as PEFT reads it ('model.layers.3.mlp' -> 3)."""
    match = _LAYER_INDEX.match(fqn + ".")
    return int(match.group("idx")) if match else None


def iter_modules(model: nn.Module):
    """(fqn, module) pairs in named_modules order, not descending into adapter layers or their base."""
    stack = [("", model)]
    while stack:
        name, module = stack.pop()
        yield name, module
        if is_adapter_layer(module):
            continue
        children = [(f"{name}.{child_name}" if name else child_name, child)
                    for child_name, child in module._modules.items() if child is not None]
        stack.extend(reversed(children))


def module_graph(model: nn.Module) -> nx.DiGraph:
    """The module tree as a DiGraph with node facts; cheap enough for a 70B meta model."""
    graph = nx.DiGraph()
    owners: dict[int, list[str]] = {}
    for name, module in iter_modules(model):
        shapes = {p_name: tuple(p.shape) for p_name, p in module._parameters.items() if p is not None}
        for p_name, p in module._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append(name)
        graph.add_node(name, type=type(module).__name__, module=module,
                       params=sum(p.numel() for p in module._parameters.values() if p is not None),
                       shapes=shapes, layer_index=layer_index(name) if name else None, tied_with=())
        if name:
            parent = name.rpartition(".")[0]
            graph.add_edge(parent, name)
    for names in owners.values():
        if len(names) > 1:
            for name in names:
                graph.nodes[name]["tied_with"] = tuple(n for n in names if n != name)
    return graph
