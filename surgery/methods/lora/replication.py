"""layer_replication (PEFT's replicate_layers): stack the base model's decoder layers by [start, end) ranges.

    layers [0, 1, 2, 3, 4], layer_replication [[0, 4], [2, 5]]  ->  [0, 1, 2, 3, 2, 3, 4]

Each entry of the new list is a clone of its source layer sharing the source's parameters (buffers are copied),
so memory stays close to the original; LoRA is then applied to every replica separately. The layer list is found
as PEFT finds it: below `.model` (repeatedly) and `.bert`, the first of `layers` (Llama), `encoder.layer` (Bert)
or `h` (Falcon); `layer_idx` attributes are renumbered and config.num_hidden_layers set to the new count.

Plan first, then mutate: `plan_replication` checks the ranges against the layer count, `replicated_view` builds
the new list on a shallow view of the model (the model untouched), `install` gives the model the view's list.
Differences from PEFT, on purpose: a second adapter with the same layer_replication does not replicate the
replicated layers again (it adapts them as they are; a different map is refused), layers that already hold
adapters are not cloned (their adapters' weights would be shared and their keys renumbered), and merging is
refused where replicas share a base weight (PEFT's check is never reached there, and its merge adds every
replica's update into the one shared weight).
"""
from __future__ import annotations

import copy
from collections import Counter
from typing import Optional

from torch import nn

from ...errors import ConfigError, MergeError, PlanError
from ...graph.walk import is_adapter_layer

CHANGE = "layer_replication"
_SHARED = "_surgery_replica_of"   # on every module of a replica whose source appears more than once
_LAYER_MAP = "_surgery_layer_map"  # on a replicated layer list: the map that made it


def locate_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(path, module list) of the decoder layers, by PEFT's rule."""
    path, inner = [], model
    while isinstance(inner._modules.get("model"), nn.Module):
        path.append("model")
        inner = inner._modules["model"]
    if isinstance(inner._modules.get("bert"), nn.Module):   # Bert variants nest the main model under .bert
        path.append("bert")
        inner = inner._modules["bert"]
    encoder = inner._modules.get("encoder")
    for tail, holder, attr in ((["layers"], inner, "layers"), (["encoder", "layer"], encoder, "layer"),
                               (["h"], inner, "h")):
        layers = holder._modules.get(attr) if isinstance(holder, nn.Module) else None
        if layers is not None:
            if isinstance(layers, nn.ModuleList):
                return ".".join(path + tail), layers
            break
    raise PlanError("Could not locate the layers attribute in the model. Expected Llama, Bert or Falcon compatible "
                    "architectures. (layer_replication needs the decoder layers as an nn.ModuleList at "
                    "[model.]*layers, [model.|bert.]encoder.layer or [model.]*h)")


def plan_replication(model: nn.Module, config) -> Optional[dict]:
    """The replication as data ({"change", "path", "layer_map", "sources", "layers"}), or None for no change."""
    layer_map = config.layer_replication
    if not layer_map:
        return None
    layer_map = [list(entry) for entry in layer_map]
    path, layers = locate_layers(model)
    done = layers.__dict__.get(_LAYER_MAP)
    if done is not None:   # replicated by an earlier adapter: adapt the replicas as they are
        if done == layer_map:
            return None
        raise PlanError(f"LoraConfig.layer_replication = {layer_map}: {path} was already replicated by another "
                        f"adapter with {done}; an adapter on this model can only use that map (or None)")
    count = len(layers)
    for start, end in layer_map:
        if end > count:
            raise ConfigError(f"LoraConfig.layer_replication = {layer_map}: range [{start}, {end}) reaches past the "
                              f"model's {count} layers ({path}); ranges must lie within [0, {count}]")
    adapted = sorted({i for i, layer in enumerate(layers) if any(is_adapter_layer(m) for m in layer.modules())})
    if adapted:
        raise PlanError(f"LoraConfig.layer_replication = {layer_map}: layers {adapted} of {path} already hold "
                        f"adapters, whose weights the replicas would share and whose keys would change; add the "
                        f"adapter with layer_replication first, or replicate a model without adapters")
    sources = [i for start, end in layer_map for i in range(start, end)]
    return {"change": CHANGE, "path": path, "layer_map": layer_map, "sources": sources, "layers": count}


def _clone(layer: nn.Module, index: int, shared_source: Optional[int]) -> nn.Module:
    """A copy of `layer` that shares its parameters (buffers and other state are copied), renumbered to `index`;
    shared_source: the source's index when other replicas share its weights too."""
    clone = copy.deepcopy(layer, {id(p): p for p in layer.parameters()})
    for module in clone.modules():
        if hasattr(module, "layer_idx"):   # transformers' layers know their position (the KV cache slot)
            module.layer_idx = index
        if shared_source is not None:
            module.__dict__[_SHARED] = shared_source
    return clone


def _shallow(module: nn.Module) -> nn.Module:
    """A copy of `module` with its own table of children (the children themselves shared)."""
    clone = copy.copy(module)
    clone.__dict__["_modules"] = dict(module._modules)
    return clone


def replicated_view(model: nn.Module, change: dict) -> nn.Module:
    """The model as the replication leaves it: shallow copies down to the layer list's parent, holding the new
    list of replicas; every other module is the model's own. `model` is not changed."""
    *parents, attr = change["path"].split(".")
    root = node = _shallow(model)
    for part in parents:
        node._modules[part] = _shallow(node._modules[part])
        node = node._modules[part]
    layers = node._modules[attr]
    counts = Counter(change["sources"])
    new = nn.ModuleList([_clone(layers[i], j, i if counts[i] > 1 else None) for j, i in enumerate(change["sources"])])
    new.__dict__[_LAYER_MAP] = change["layer_map"]
    node._modules[attr] = new
    return root


def install(model: nn.Module, view: nn.Module, change: dict) -> None:
    """Give `model` the view's layer list and the new layer count."""
    *parents, attr = change["path"].split(".")
    parent = model.get_submodule(".".join(parents)) if parents else model
    setattr(parent, attr, view.get_submodule(change["path"]))
    config = getattr(parent if parents else model, "config", None)
    if config is not None and hasattr(config, "num_hidden_layers"):   # common to Llama, Bert, Falcon (as PEFT)
        config.num_hidden_layers = len(change["sources"])


def describe(change: dict) -> str:
    return (f"layer_replication {change['layer_map']}: {change['path']} {change['layers']} -> "
            f"{len(change['sources'])} layers (sources {','.join(map(str, change['sources']))}), base weights shared")


def replica_merge_refusal(layer: nn.Module) -> Optional[MergeError]:
    """A LoRA layer whose base weight other replicas share cannot fold its own update into it."""
    source = layer.get_base_layer().__dict__.get(_SHARED)
    if source is None:
        return None
    return MergeError(f"Cannot merge LORA layers when base model layers are replicated: {layer._layer_name()} "
                      f"shares its base weight with the other replicas of layer {source} (layer_replication), so "
                      f"merging its update would change them all; keep the adapter unmerged, or unload() it")
