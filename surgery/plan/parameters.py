"""Parameter targets (a config's `target_parameters`): adapt one nn.Parameter of a module, not the module.

Mixture-of-experts layers in transformers hold their experts as fused 3-D parameters (experts x out x in) on one
module, which no module handler can wrap; a method that has a ParameterHandler adapts such a parameter instead.
Matching follows PEFT's rule:

    key  = "<module path>.<parameter name>"   (the module path seen through adapter layers)
    hit  = key == name  or  key ends with "." + name,   for a name in target_parameters
    order: modules in model order, each module's parameters in registration order (the first hit innermost
           when several parameters of one module are adapted: the layers stack, each wrapping the one before)
    a parametrized module (torch.nn.utils.parametrize) matches exact keys only, names in sorted order

A parameter already adapted by an earlier adapter gets the new adapter on that same layer (action "add"); all
adapters that target parameters must target the same set (PEFT's rule: the stacking order is what places each
saved tensor, so differing sets would give differing checkpoint keys).
"""
from __future__ import annotations

import re
import warnings
from typing import NamedTuple, Optional

from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, PlanError, TargetNotFoundError, closest
from ..graph.walk import is_adapter_layer
from ..methods.spec import RewriteSite, qualified_name
from .model import Rewrite


class ParameterTarget(NamedTuple):
    path: str     # the module holding the parameter ("" for the root)
    name: str     # the parameter's name on it

    @property
    def key(self) -> str:
        return f"{self.path}.{self.name}" if self.path else self.name


def is_parameter_layer(module: nn.Module) -> bool:
    """Whether `module` is an adapter layer that adapts one parameter of its base (see ParameterHandler)."""
    return getattr(type(module), "_surgery_parameter_layer", False)


def parameter_layer(module: nn.Module, name: str) -> Optional[nn.Module]:
    """The layer of a stack of parameter layers (outermost first) that adapts parameter `name`, if any."""
    while is_parameter_layer(module):
        if module.parameter_name == name:
            return module
        module = module.base_layer
    return None


def _base(module: nn.Module) -> nn.Module:
    return module.get_base_layer() if is_adapter_layer(module) else module


def _hits(key: str, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if key == n or key.endswith("." + n)]


def match_parameters(graph, names) -> tuple[list[ParameterTarget], set[str]]:
    """(the parameters `names` select, in PEFT's order; the names that selected something)."""
    names = tuple(names)
    found: list[ParameterTarget] = []
    used: set[str] = set()
    for fqn, node in graph.nodes(data=True):
        base = _base(node["module"])
        if parametrize.is_parametrized(base):   # PEFT: exact keys only (the stored tensor has moved)
            for key in sorted(set(names)):
                path, _, pname = key.rpartition(".")
                if path == fqn and getattr(base, pname, None) is not None:
                    found.append(ParameterTarget(fqn, pname))
                    used.add(key)
            continue
        for pname, param in base._parameters.items():
            hits = _hits(f"{fqn}.{pname}" if fqn else pname, names) if param is not None else []
            if hits:
                found.append(ParameterTarget(fqn, pname))
                used.update(hits)
    return found, used


def _candidates(graph, segments: int) -> dict[str, tuple]:
    """{suffix of `segments` path parts (numbers kept): shape} of the model's 2-D and 3-D parameters, 3-D first."""
    out: dict[str, tuple] = {}
    for fqn, node in graph.nodes(data=True):
        for pname, param in _base(node["module"])._parameters.items():
            if param is not None and param.dim() in (2, 3):
                key = f"{fqn}.{pname}" if fqn else pname
                out.setdefault(".".join(key.split(".")[-segments:]), tuple(param.shape))
    return dict(sorted(out.items(), key=lambda item: -len(item[1])))


def _described(graph, names) -> str:
    """What the user could have written: the closest parameter names to each given name, then some of all."""
    hints = []
    for name in names:
        near = closest(name, _candidates(graph, name.count(".") + 1))
        hints.append(f"{name!r}" + (f" (did you mean {', '.join(map(repr, near))}?)" if near else ""))
    examples = [f"{k} ({'x'.join(map(str, s))})" for k, s in list(_candidates(graph, 3).items())[:12]]
    unnumbered = list(dict.fromkeys(re.sub(r"^\d+\.", "", e) for e in examples))
    return (f"{', '.join(hints)}; 2-D and 3-D parameters here include: {', '.join(unnumbered) or 'none'}")


def check_found(graph, config, targets, used, module_matches, strict: bool) -> None:
    """PEFT's outcomes: nothing matched at all is an error; one kind matching nothing while the other matched
    warns (RuntimeWarning, PEFT's words); single names that selected nothing warn with the closest names."""
    names = list(config.target_parameters)
    if not targets and not module_matches:
        modules = getattr(config, "target_modules", None)
        lead = ("No `target_modules` passed but also no `target_parameters` found. Please check the values for "
                "these arguments." if not modules else
                f"Target modules {modules} not found in the base model. Please check the target modules and try "
                f"again.")
        raise TargetNotFoundError(f"{lead} (target_parameters = {names!r} matched no parameter: "
                                  f"{_described(graph, names)})")
    if not strict:
        return
    if not targets:
        warnings.warn(f"target_parameters={names} were set but no parameter was matched. "
                      f"({_described(graph, names)})", RuntimeWarning, stacklevel=4)
        return
    missing = [n for n in names if n not in used]
    if missing:
        warnings.warn(f"target_parameters: {_described(graph, missing)}; the other names matched "
                      f"{len(targets)} parameter(s), which are adapted", RuntimeWarning, stacklevel=4)
    if getattr(config, "target_modules", None) and not module_matches:
        warnings.warn(f"target_modules={config.target_modules} were set but no module was matched.",
                      RuntimeWarning, stacklevel=4)


def _refuse_clash(graph, target: ParameterTarget, module_matches: set) -> None:
    module = graph.nodes[target.path]["module"]
    other_layer = is_adapter_layer(module) and not is_parameter_layer(module)
    if target.path in module_matches or other_layer:   # PEFT's words first
        base = _base(module)
        why = ("target_modules adapts that module too" if target.path in module_matches else
               f"it is already a {type(module).__name__} adapter layer")
        raise PlanError(f"Trying to wrap an `nn.Parameter` of layer '{target.path}' of type {type(base).__name__}, "
                        f"which is not a valid target. Make sure that this layer is not also targeted with "
                        f"`target_modules`. For some models, PEFT will do this automatically, try setting "
                        f"`target_modules=[]` to prevent it. (target_parameters selects {target.key!r} and {why}: "
                        f"adapt either the module or its parameter)")


def parameter_rewrites(graph, config, spec, adapter_name: str, notes: list, module_matches: list,
                       targets: list[ParameterTarget]) -> list[Rewrite]:
    """One Rewrite per targeted parameter, every check done first (nothing is built here)."""
    handler = spec.parameter_handler
    if handler is None:
        raise ConfigError(f"target_parameters = {list(config.target_parameters)!r}: {spec.label} cannot adapt "
                          f"parameters; use target_modules")
    matched = set(module_matches)
    rewrites = []
    for target in targets:
        if not target.path:   # PEFT's words: the root cannot be replaced by a layer wrapping it
            raise PlanError(f"Targeting an nn.Parameter on the top-level module is not supported (parameter "
                            f"'{target.name}'). (target_parameters = {list(config.target_parameters)!r}: name a "
                            f"parameter of a submodule, e.g. 'layer.weight')")
        _refuse_clash(graph, target, matched)
        module = graph.nodes[target.path]["module"]
        base = _base(module)
        reason = handler.refuses(base, target.name, config, target.key)
        if reason:
            raise PlanError(reason)
        existing = parameter_layer(module, target.name)
        if existing is not None and adapter_name in existing.adapter_names():
            raise PlanError(f"adapter {adapter_name!r} already exists on {target.key}; pick another adapter_name "
                            f"or delete_adapter({adapter_name!r}) first")
        params = handler.rewrite_params(RewriteSite(target.path, base, config, notes, parameter=target.name))
        tensor = getattr(base, target.name)
        rewrites.append(Rewrite(
            path=target.path, base_type=type(base).__name__, base_shape=tuple(tensor.shape),
            method=config.peft_type.value, adapter_name=adapter_name, layer_class=qualified_name(handler.layer),
            action="add" if existing is not None else "wrap", added_params=handler.added_params(tensor, params, config),
            params=params, parameter=target.name))
    return rewrites


def check_same_parameter_targets(config, others: dict) -> None:
    """PEFT's rule for several adapters on one model: those that target parameters target the same set."""
    mine = getattr(config, "target_parameters", None)
    if not mine:
        return
    for name, other in others.items():
        theirs = getattr(other, "target_parameters", None)
        if theirs and set(theirs) != set(mine):
            raise ConfigError(f"When using multiple adapters with `target_parameters`, all adapters must target the "
                              f"same set of parameters, but got {sorted(mine)} for the new adapter and "
                              f"{sorted(theirs)} for adapter '{name}'. (the parameter layers of one module stack "
                              f"in a fixed order, which places each saved tensor)")
