"""The planner: every check happens here, before anything changes. `plan()` never mutates the model."""
from __future__ import annotations

import logging
from typing import Optional, Union

from torch import nn

from ..config.base import PeftConfig
from ..config.loading import load_config
from ..errors import ConfigError, PlanError
from ..graph.walk import is_adapter_layer, module_graph
from ..matching.rules import compile_rule, match_rule
from ..matching.selectors import AllLinear, Names, Types
from ..methods.registry import get_method
from ..naming import validate_adapter_name
from .model import Plan, Rewrite, SavedModule

logger = logging.getLogger(__name__)


def plan(model: nn.Module, config: Union[PeftConfig, dict, str], adapter_name: str = "default", *,
         strict_targets: bool = True) -> Plan:
    """A dry run: the Plan of rewrites `config` would make on `model` (works on a meta-device model)."""
    config = load_config(config)
    validate_adapter_name(adapter_name)
    spec = get_method(config.peft_type)
    if spec.planner is not None:  # methods that inject state instead of wrapping modules (prompt learning)
        _add_task_heads(config)
        saved = _modules_to_save(model, module_graph(model), config, [])
        return spec.planner(model, config, adapter_name, saved)
    _fill_default_targets(config, model, spec)
    _add_task_heads(config)
    graph = module_graph(model)
    rule = compile_rule(config, model)
    _check_layers(graph, rule)
    matches = match_rule(graph, rule, strict=strict_targets)
    warnings: list[str] = []
    rewrites = [_rewrite(graph, m, config, spec, adapter_name, warnings) for m in matches]
    for m in matches:
        tied = graph.nodes[m.fqn]["tied_with"]
        if tied:
            warnings.append(f"{m.fqn} shares its weight with {', '.join(tied)}: the adapter applies to "
                            f"{m.fqn} only, so merging will split the tie")
    saved = _modules_to_save(model, graph, config, matches)
    resolved = _resolved_config(config, rule, graph, matches)
    for w in warnings:
        logger.warning(w)
    return Plan(adapter_name=adapter_name, peft_type=config.peft_type.value,
                task_type=config.task_type.value if config.task_type else None, rewrites=rewrites,
                modules_to_save=saved, trainable_bias_params=_bias_params(model, config, matches, saved),
                base_params=count_params(model, graph), config=resolved.to_dict(), rules=rule.describe(),
                warnings=warnings)


def count_params(model: nn.Module, graph=None) -> int:
    """Every parameter once (tied parameters counted once), as PEFT's get_nb_trainable_parameters; read from
    the module graph's facts when its walk saw every parameter."""
    counted = graph.graph.get("param_count") if graph is not None else None
    return counted if counted is not None else sum(p.numel() for p in model.parameters())


def _add_task_heads(config) -> None:
    """The heads the task's PeftModel class trains in full (e.g. the classifier for SEQ_CLS), as PEFT adds."""
    from ..facade.tasks import class_for_task  # lazy: the facade imports the planner

    add_heads(config, class_for_task(config.task_type).default_modules_to_save)


def add_heads(config, heads) -> None:
    """Append `heads` to config.modules_to_save (in place on the planner's own copy), skipping repeats."""
    extra = [m for m in heads if m not in (config.modules_to_save or [])]
    if extra and hasattr(config, "modules_to_save"):
        config.modules_to_save = list(config.modules_to_save or []) + extra


def _fill_default_targets(config, model, spec) -> None:
    if config.target_modules is not None or getattr(config, "target_types", None):
        return
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in spec.default_targets:
        raise ConfigError(f"target_modules is not set and there is no default for model_type {model_type!r}; "
                          f"set target_modules (names, a regex, or 'all-linear')")
    config.target_modules = list(spec.default_targets[model_type])


def _check_layers(graph, rule) -> None:
    if rule.layers is None:
        return
    found = {rule.layers.index_of(fqn) for fqn in graph.nodes if fqn} - {None}
    missing = [i for i in rule.layers.indexes if i not in found]
    if missing:
        valid = f"0..{max(found)}" if found else "none (no numbered layers found; check layers_pattern)"
        raise ConfigError(f"layers_to_transform = {list(rule.layers.indexes)}: layer(s) {missing} do not exist"
                          f"{' under ' + ', '.join(rule.layers.patterns) if rule.layers.patterns else ''}; "
                          f"valid layer indexes: {valid}")


def _rewrite(graph, match, config, spec, adapter_name, warnings) -> Rewrite:
    module = graph.nodes[match.fqn]["module"]
    layer_cls = spec.wrapper_for(module, config, match.fqn)
    action = "wrap"
    if is_adapter_layer(module):
        if not hasattr(module, "update_layer"):
            raise PlanError(f"{match.fqn} is a {type(module).__name__}; it cannot take a {config.peft_type.value} "
                            f"adapter")
        if adapter_name in module.adapter_names():
            raise PlanError(f"adapter {adapter_name!r} already exists on {match.fqn}; pick another adapter_name "
                            f"or delete_adapter({adapter_name!r}) first")
        action = "add"
    base = module.get_base_layer() if is_adapter_layer(module) else module
    is_conv1d = type(base).__name__ == "Conv1D"
    if is_conv1d and not config.fan_in_fan_out:
        _note_once(warnings, "transformers Conv1D layers store weights (in, out): fan_in_fan_out is set to "
                             "True for them, as PEFT does")
    if not is_conv1d and config.fan_in_fan_out and layer_cls.__name__ == "Linear":
        _note_once(warnings, "fan_in_fan_out=True but the targets are torch Linear layers: using False for them")
    scaling = match.alpha / (match.rank ** 0.5) if getattr(config, "use_rslora", False) else match.alpha / match.rank
    return Rewrite(path=match.fqn, base_type=type(base).__name__, base_shape=tuple(base.weight.shape),
                   method=config.peft_type.value, adapter_name=adapter_name, rank=match.rank, alpha=match.alpha,
                   scaling=scaling, added_params=spec.added_params(module, match.rank, config),
                   layer_class=layer_cls.__name__, action=action, fan_in_fan_out=is_conv1d,
                   use_dora=bool(getattr(config, "use_dora", False)))


def _note_once(warnings: list[str], message: str) -> None:
    if message not in warnings:
        warnings.append(message)


def _modules_to_save(model, graph, config, matches) -> list[SavedModule]:
    names = getattr(config, "modules_to_save", None) or []
    if not names:
        return []
    selector = Names(tuple(names))
    targeted = {m.fqn for m in matches}
    saved = []
    for fqn in graph.nodes:
        if fqn and selector(fqn, graph.nodes[fqn]) and fqn not in targeted:
            module = graph.nodes[fqn]["module"]
            if getattr(module, "_surgery_modules_to_save", False):
                params = sum(p.numel() for p in module.original_module.parameters())
            else:
                params = sum(p.numel() for p in module.parameters())
            saved.append(SavedModule(fqn, type(module).__name__, params))
    return saved


def _bias_params(model, config, matches, saved) -> int:
    mode = getattr(config, "bias", "none")
    if mode == "all":  # every bias, except those of modules_to_save originals (their copies train instead)
        prefixes = tuple(f"{m.path}." for m in saved)
        return sum(p.numel() for n, p in model.named_parameters()
                   if (n == "bias" or n.endswith(".bias")) and not n.startswith(prefixes))
    if mode == "lora_only":
        total = 0
        for m in matches:
            module = model.get_submodule(m.fqn)
            base = module.get_base_layer() if is_adapter_layer(module) else module
            total += base.bias.numel() if getattr(base, "bias", None) is not None else 0
        return total
    return 0


def _resolved_config(config, rule, graph, matches):
    """The config as it will be saved: all-linear / target_types expanded into module names."""
    resolved = config.copy()
    if isinstance(rule.target, AllLinear) or isinstance(rule.types, Types):
        resolved.target_modules = minimal_names([m.fqn for m in matches], graph)
        resolved.target_types = None
    return resolved


def minimal_names(paths: list[str], graph) -> list[str]:
    """Leaf names if they select exactly `paths` among the graph's modules, else the full paths (sorted)."""
    leaves = sorted({p.rpartition(".")[2] for p in paths})
    selector = Names(tuple(leaves))
    selected = {fqn for fqn in graph.nodes if fqn and selector(fqn, graph.nodes[fqn])}
    return leaves if selected == set(paths) else sorted(paths)
