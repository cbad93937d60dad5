"""Build a plan's auxiliary wraps (spec.auxiliary: modules a config wraps besides the method's layers), without
swapping them in: the rewriter swaps them with the layers, after everything was built.

A wrap whose params name `tied_to` (a path) shares the state of the wrapper at that path: it is passed that
wrapper, built earlier in this plan or already on the model (a second adapter on the same modules).
"""
from __future__ import annotations

from torch import nn

from ..plan.ties import TIED_TO


def build_auxiliaries(root: nn.Module, plan, spec, config, extended: list, resolve) -> list[tuple[str, nn.Module]]:
    """[(path, new wrapper)] for the plan's auxiliary wraps; wrappers already there get the adapter (appended to
    `extended`, for the rollback). resolve(root, path) -> the module at path."""
    name = plan.adapter_name
    built: list[tuple[str, nn.Module]] = []
    wrappers: dict[str, nn.Module] = {}
    for wrap in plan.auxiliaries:
        module = resolve(root, wrap.path)
        params = dict(wrap.params)
        if TIED_TO in params:
            params[TIED_TO] = wrappers[params[TIED_TO]]
        if wrap.action == "add":
            module.update_layer(name, config, **params)
            extended.append(module)
            wrappers[wrap.path] = module
            continue
        wrapper = spec.auxiliary.wrapper_class(wrap.wrapper)(module)
        wrapper.__dict__["_surgery_fqn"] = wrap.path
        wrapper.update_layer(name, config, **params)
        built.append((wrap.path, wrapper))
        wrappers[wrap.path] = wrapper
    return built
