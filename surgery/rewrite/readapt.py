"""Change one layer's adapter after its plan was applied, keeping the plan true to the model.

Data-driven initialisations learn per-layer parameters only once the adapted model has run (e.g. a rank
chosen from the layer's inputs); they then rebuild a layer's adapter with the new parameters, or take it off.
Method-blind, like apply_plan: the layer is rebuilt with `layer.update_layer(adapter_name, config, **params)`
and its Rewrite in the plan gets the new parameters and parameter count (spec.count), or leaves the plan.

The rebuilt adapter keeps the dtype its parameters had (e.g. float32 factors on a bf16 base, autocast when the
adapter was added), its trainability follows the config as when it was added.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import PlanError
from ..methods.registry import get_method
from ..plan.model import Plan
from ..plan.ties import TIED_TO
from .apply import parent_and_attr
from .merge import unwrap


def _module_at(model: nn.Module, path: str) -> nn.Module:
    parent, attr = parent_and_attr(model, path)
    return parent._modules.get(attr) if attr in parent._modules else parent.get_submodule(attr)


def _rewrite_index(plan: Plan, path: str) -> int:
    for i, rw in enumerate(plan.rewrites):
        if rw.path == path and not rw.parameter:
            return i
    raise PlanError(f"{path!r} is not a module adapter {plan.adapter_name!r} rewrote; its plan targets: "
                    f"{plan.paths()}")


def _adapter_parameters(layer: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """{container/key: parameter} of one adapter on a layer."""
    found = {}
    for container, holder in layer.adapter_containers():
        if adapter_name in holder._parameters:
            found[container] = holder._parameters[adapter_name]
        elif adapter_name in holder._modules:
            for key, param in holder._modules[adapter_name].named_parameters():
                found[f"{container}.{key}"] = param
    return found


def _restore_dtypes(layer: nn.Module, adapter_name: str, dtypes: dict) -> None:
    """Cast the rebuilt adapter's floating parameters back to the dtypes the old ones had (same keys)."""
    for container, holder in layer.adapter_containers():
        if adapter_name in holder._parameters:
            owners = [(holder, adapter_name, container)]
        elif adapter_name in holder._modules:
            owners = [(module, key, f"{container}.{prefix + '.' if prefix else ''}{key}")
                      for prefix, module in holder._modules[adapter_name].named_modules()
                      for key in list(module._parameters)]
        else:
            continue
        for owner, key, full in owners:
            param = owner._parameters[key]
            dtype = dtypes.get(full)
            if param is not None and dtype is not None and param.dtype != dtype and param.is_floating_point():
                owner._parameters[key] = nn.Parameter(param.data.to(dtype), requires_grad=param.requires_grad)


@torch.no_grad()
def rebuild_adapter(model: nn.Module, plan: Plan, config, path: str, params: dict) -> nn.Module:
    """Build adapter `plan.adapter_name` of the layer at `path` afresh with `params` (the method's per-module
    parameters, as in the plan's Rewrite) and record them in the plan. Returns the layer."""
    index = _rewrite_index(plan, path)
    layer = _module_at(model, path)
    name = plan.adapter_name
    if name not in layer.adapter_names():
        raise PlanError(f"{path!r} holds no adapter {name!r}; it holds {layer.adapter_names()}")
    if name in layer.merged_adapters:
        raise PlanError(f"{path!r}: adapter {name!r} is merged; unmerge it before rebuilding it")
    dtypes = {key: p.dtype for key, p in _adapter_parameters(layer, name).items()}
    extra = {TIED_TO: _module_at(model, params[TIED_TO])} if TIED_TO in params else {}
    layer.update_layer(name, config, **{**params, **extra})
    _restore_dtypes(layer, name, dtypes)
    spec = get_method(plan.peft_type)
    rw = plan.rewrites[index]
    plan.rewrites[index] = dataclasses.replace(rw, params=dict(params),
                                               added_params=spec.count(layer.get_base_layer(), params, config))
    return layer


def remove_adapter(model: nn.Module, plan: Plan, path: str) -> None:
    """Take adapter `plan.adapter_name` off the layer at `path` (the original module goes back in when no adapter
    is left on it) and drop the layer from the plan."""
    index = _rewrite_index(plan, path)
    layer = _module_at(model, path)
    if plan.adapter_name in layer.merged_adapters:
        raise PlanError(f"{path!r}: adapter {plan.adapter_name!r} is merged; unmerge it before removing it")
    if plan.adapter_name in layer.adapter_names():
        layer.delete_adapter(plan.adapter_name)
    if not layer.adapter_names():
        unwrap(model, path, layer)
    del plan.rewrites[index]
