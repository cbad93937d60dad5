"""Optional enrichment: the order in which modules are called on an example input.

Planning never needs it. It runs one forward pass with forward pre-hooks (on meta tensors when the model
is on the meta device, so no compute and no memory) and records each module's first call index as the node
fact `call_order`. torch.fx symbolic tracing fails on most transformers models (data-dependent control
flow), hooks do not.
"""
from __future__ import annotations

import networkx as nx
import torch
from torch import nn


def trace_call_order(model: nn.Module, graph: nx.DiGraph, *args, **kwargs) -> nx.DiGraph:
    """Run model(*args, **kwargs) once under no_grad and annotate graph nodes with `call_order`."""
    order: dict[str, int] = {}
    names = {id(module): name for name, module in model.named_modules()}
    handles = []

    def hook(module, _inputs):
        name = names.get(id(module))
        if name is not None and name not in order:
            order[name] = len(order)

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    for name, index in order.items():
        if name in graph.nodes:
            graph.nodes[name]["call_order"] = index
    return graph


def in_call_order(graph: nx.DiGraph) -> list[str]:
    """Module names sorted by first call (modules never called come last, in walk order)."""
    nodes = list(graph.nodes)
    return sorted(nodes, key=lambda n: (graph.nodes[n].get("call_order", len(nodes)), nodes.index(n)))
