"""Apply a Plan: build every new layer first, then swap them in, so a failure changes nothing.

Method-blind: the plan names each layer class (one of its method's handlers) and the parameters of each
adapter; a layer is built as `LayerClass(base)` and given its adapter with
`layer.update_layer(adapter_name, config, **params)`.
"""
from __future__ import annotations

import logging
from typing import Optional

from torch import nn

from ..errors import PlanError
from ..methods.registry import get_method
from ..plan.model import Plan
from ..plan.parameters import parameter_layer
from ..plan.ties import TIED_TO
from .auxiliary import build_auxiliaries
from .modules_to_save import ModulesToSaveWrapper
from .added import mark_added

logger = logging.getLogger(__name__)


def parent_and_attr(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The parent module of `path` and the child's attribute name, read through the `_modules` dicts
    (get_submodule's getattr per segment is the slow path of nn.Module)."""
    parent_path, _, attr = path.rpartition(".")
    parent = model
    for part in parent_path.split(".") if parent_path else ():
        child = parent._modules.get(part)
        parent = child if child is not None else parent.get_submodule(part)
    return parent, attr


def _module_at(root: nn.Module, path: str) -> nn.Module:
    return _child(*parent_and_attr(root, path))


def _child(parent: nn.Module, attr: str) -> nn.Module:
    child = parent._modules.get(attr)
    return child if child is not None else parent.get_submodule(attr)


def apply_plan(model: nn.Module, plan: Plan, config, active: Optional[list[str]] = None,
               holder: Optional[nn.Module] = None) -> Plan:
    """Rewrite `model` as `plan` says (config: the resolved method config). Returns the plan, applied.

    active: the adapters active afterwards (default: the new one). holder: where the adapter's shared state
    is kept (the tuner, PeftModel.base_model), for methods that have one.
    """
    spec = get_method(plan.peft_type)
    name = plan.adapter_name
    built: list[tuple[nn.Module, str, nn.Module, str]] = []   # (parent, attr, new layer, path)
    extended: list[nn.Module] = []                        # existing adapter layers given one more adapter
    shared = None
    # a structural change (spec.restructure) is built on a view of the changed model; the model changes last
    root = spec.restructure.view(model, plan.structure[0]) if plan.structure else model
    try:
        extra = {}
        if spec.shared_state is not None:   # kept on the tuner; layers get its live holders (see TunerModel)
            if holder is None:
                raise PlanError(f"{spec.label} adapters share state across their layers, which lives on the "
                                f"PeftModel: use get_peft_model(model, config) instead of apply_rules")
            shared = spec.shared_state(model, plan, config, holder)
            extra["shared"] = holder.add_shared_state(name, shared)
        layers: dict[str, nn.Module] = {}   # path -> its layer: a tie follower gets its leader's (plan/ties.py)
        for rw in plan.rewrites:
            parent, attr = parent_and_attr(root, rw.path)
            # parameter layers of one module stack: a later one wraps the layer built before it (plan/parameters.py)
            module = layers[rw.path] if rw.parameter and rw.path in layers else _child(parent, attr)
            params = rw.params if TIED_TO not in rw.params else {**rw.params, TIED_TO: layers[rw.params[TIED_TO]]}
            if rw.action == "add":
                target = parameter_layer(module, rw.parameter) if rw.parameter else module
                target.update_layer(name, config, **params, **extra)
                extended.append(target)
                layers[rw.path] = module
                continue
            cls = spec.layer_class(rw.layer_class)
            layer = cls(module, parameter_name=rw.parameter) if rw.parameter else cls(module)
            layer.__dict__["_surgery_fqn"] = rw.path
            layer.update_layer(name, config, **params, **extra)
            built.append((parent, attr, layer, rw.path))
            layers[rw.path] = layer
        saved, copies = [], {}   # copies: path -> its wrapper, for the copies tied to it (SavedModule.tied_to)
        for entry in plan.modules_to_save:
            module = root.get_submodule(entry.path)
            wrapper = module if isinstance(module, ModulesToSaveWrapper) else ModulesToSaveWrapper(module)
            wrapper.update(name, trainable=not config.inference_mode,
                           tied_to=copies[entry.tied_to] if getattr(entry, "tied_to", None) else None)
            copies[entry.path] = wrapper
            saved.append((*parent_and_attr(root, entry.path), wrapper, module, entry.path))
        wrapped = build_auxiliaries(root, plan, spec, config, extended, _module_at)
    except Exception as exc:
        for layer in extended:
            if name in layer.adapter_names():
                layer.delete_adapter(name)
        if shared is not None:
            holder.delete_shared_state(name)
        if isinstance(exc, PlanError):
            raise
        raise PlanError(f"applying the plan failed before the model was changed: {exc}") from exc
    # Nothing below can fail on valid input: swap the new layers in (stacked ones in order: the outermost last).
    if plan.structure:   # the model takes the view's structure; parents are then found again on the model itself
        spec.restructure.install(model, root, plan.structure[0])
    for parent, attr, layer, path in built:
        setattr(*(parent_and_attr(model, path) if plan.structure else (parent, attr)), layer)
    for parent, attr, wrapper, original, path in saved:
        if wrapper is not original:
            setattr(*(parent_and_attr(model, path) if plan.structure else (parent, attr)), wrapper)
    for path, wrapper in wrapped:
        setattr(*parent_and_attr(model, path), wrapper)
    # the new adapter's flags; the other adapters' are left as they are when nothing changed them (added.py)
    new = [layer for _, _, layer, _ in built] + [w for _, _, w, original, _ in saved if w is not original]
    new += [wrapper for _, wrapper in wrapped]
    grown = extended + [w for _, _, w, original, _ in saved if w is original]
    mark_added(model, config, active or [name], [rw.path for rw in plan.rewrites], name, new, grown)
    plan.applied = True
    return plan
