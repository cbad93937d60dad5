"""The planner: every check happens here, before anything changes. `plan()` never mutates the model.

It is method-blind: the method's spec (surgery/methods/<name>/) says which module types it wraps, with which
parameters and at what cost; the planner matches the config's targets over the module graph, asks the spec
about each match, and records the answers in a Plan.
"""
from __future__ import annotations

import logging
from typing import Optional, Union

from torch import nn

from ..config.base import PeftConfig
from ..config.loading import load_config
from ..errors import ConfigError, PlanError
from .memory import memory_figures, storage_label
from ..graph.embedding_ties import warn_if_tie_not_kept
from ..graph.kinds import weight_shape
from ..graph.census import parameter_total
from ..graph.walk import is_adapter_layer, module_graph
from ..matching.rules import compile_rule, match_rule
from ..matching.selectors import AllLinear, Names, Types
from ..methods.base_layer import AdapterLayer
from ..methods.registry import get_method
from ..methods.spec import RewriteSite, qualified_name
from ..naming import validate_adapter_name
from ..tasks import task_for
from .additions import auxiliary_wraps, config_ties, restructured, with_tied_copies
from .model import Plan, Rewrite, SavedModule
from .moe import routing_notes
from .parameters import check_found, match_parameters, parameter_rewrites
from .ties import TIED_TO, followers

logger = logging.getLogger(__name__)


def plan(model: nn.Module, config: Union[PeftConfig, dict, str], adapter_name: str = "default", *,
         strict_targets: bool = True, heads: Optional[tuple[str, ...]] = None,
         checkpoint_shapes: Optional[dict] = None) -> Plan:
    """A dry run: the Plan of rewrites `config` would make on `model` (works on a meta-device model).

    heads: modules trained in full besides config.modules_to_save (default: the task type's heads, e.g. the
    classifier for SEQ_CLS; a PeftModel class passes its own). checkpoint_shapes: {checkpoint key: shape} of the
    adapter being loaded, if any (see RewriteSite.saved)."""
    return plan_with_config(model, config, adapter_name, strict_targets=strict_targets, heads=heads,
                            checkpoint_shapes=checkpoint_shapes)[0]


def plan_with_config(model: nn.Module, config, adapter_name: str = "default", *, strict_targets: bool = True,
                     heads: Optional[tuple[str, ...]] = None,
                     checkpoint_shapes: Optional[dict] = None) -> tuple[Plan, PeftConfig]:
    """The Plan and the resolved config object it applies (the caller's config is copied once, here)."""
    config = load_config(config)
    validate_adapter_name(adapter_name)
    spec = get_method(config.peft_type)
    add_heads(config, task_for(config.task_type).heads if heads is None else heads)
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = getattr(model, "name_or_path", None) or None
    model, structure = restructured(spec, model, config)   # a view of the model as the change leaves it
    graph = module_graph(model)
    if spec.planner is not None:  # methods that inject state instead of wrapping modules
        saved = _modules_to_save(graph, config, [])
        return spec.planner(model, config, adapter_name, saved, count_params(model, graph))
    # targets PEFT rewrites for the model first (e.g. v4 names of fused experts); returns plan notes
    prepared = (spec.prepare_config(config, model) or []) if spec.prepare_config is not None else []
    if not hasattr(config, "ensure_weight_tying"):   # PEFT's warning where a method cannot keep a tie
        warn_if_tie_not_kept(config, model)
    _fill_default_targets(config, model, spec)
    if spec.resolve_config is not None:   # fields PEFT derives from the model (after the default targets)
        spec.resolve_config(config, model)
    rule = compile_rule(config, model)
    _check_layers(graph, rule)
    parameter_names = getattr(config, "target_parameters", None)   # parameter targets (plan/parameters.py)
    targets, used = match_parameters(graph, parameter_names) if parameter_names else ([], set())
    matches = match_rule(graph, rule, strict=strict_targets, allow_empty=bool(parameter_names))
    if parameter_names:
        check_found(graph, config, targets, used, matches, strict_targets)
    notes: list[str] = list(prepared)
    saved = _saved_by_module(checkpoint_shapes, matches)
    rewrites = [_rewrite(graph, fqn, config, spec, adapter_name, notes, saved=saved.get(fqn)) for fqn in matches]
    saved = _modules_to_save(graph, config, matches)
    # modules sharing a weight with a target follow its layer (plan/ties.py), or those the config ties (additions.py)
    tied, tied_saved = config_ties(spec, model, graph, config, matches, saved)
    tied.update(followers(graph, matches) if spec.follows_ties else {})
    if tied:
        rewrites = [rw for rw in rewrites if rw.path not in tied]
        rewrites += [_rewrite(graph, fqn, config, spec, adapter_name, notes, leader) for fqn, leader in tied.items()]
    if not spec.follows_ties:
        kept_tied = set(tied) | set(tied.values()) | set(tied_saved) | set(tied_saved.values())
        replicated = tuple(f"{change['path']}." for change in structure)   # replicas share weights on purpose
        for fqn in matches:
            tied_with = [t for t in graph.nodes[fqn]["tied_with"] if t not in kept_tied
                         and not (fqn.startswith(replicated) and t.startswith(replicated))]
            if tied_with and fqn not in kept_tied:
                notes.append(f"{fqn} shares its weight with {', '.join(tied_with)}: the adapter applies to "
                             f"{fqn} only, so merging will split the tie")
    if targets:   # after the modules, as PEFT (a module rewrite may settle config fields first)
        rewrites += parameter_rewrites(graph, config, spec, adapter_name, notes, matches, targets)
    notes += [n for n in routing_notes(graph, matches, [(t.path, t.key) for t in targets]) if n not in notes]
    saved = with_tied_copies(graph, [m for m in saved if m.path not in tied], tied_saved)
    auxiliaries = auxiliary_wraps(spec, model, graph, config, adapter_name, rewrites, saved, notes)
    _resolve_targets(config, rule, graph, matches)
    for note in notes:
        logger.warning(note)
    p = Plan(adapter_name=adapter_name, peft_type=config.peft_type.value,
             task_type=config.task_type.value if config.task_type else None, rewrites=rewrites,
             modules_to_save=saved, trainable_bias_params=_bias_params(model, config, matches, saved),
             base_params=count_params(model, graph), config=config.to_dict(), rules=_rules_text(rule, parameter_names),
             warnings=notes, columns=[list(c) for c in spec.columns], flags=[list(f) for f in spec.flags],
             structure=structure, auxiliaries=auxiliaries)
    p.memory = memory_figures(model, p.added_params)
    return p, config


def _rules_text(rule, parameter_names) -> str:
    """The compiled rule in words, with the parameter targets when there are some."""
    described = rule.describe()
    parts = [described] if described.strip() not in ("", "names") else []   # target_modules=[] names nothing
    return "; ".join(parts + ([f"parameters {', '.join(parameter_names)}"] if parameter_names else []))


def count_params(model: nn.Module, graph=None) -> int:
    """Every parameter once (tied parameters counted once), as PEFT's get_nb_trainable_parameters; read from
    the module graph's facts when its walk saw every parameter."""
    counted = graph.graph.get("param_count") if graph is not None else None
    return counted if counted is not None else parameter_total(model)


def add_heads(config, heads) -> None:
    """Append `heads` to config.modules_to_save (in place on the planner's own copy), skipping repeats."""
    extra = [m for m in heads if m not in (getattr(config, "modules_to_save", None) or [])]
    if extra and hasattr(config, "modules_to_save"):
        config.modules_to_save = list(config.modules_to_save or []) + extra


def _fill_default_targets(config, model, spec) -> None:
    if getattr(config, "target_modules", None) is not None or getattr(config, "target_types", None):
        return
    if callable(spec.default_targets):   # a method whose default depends on the model itself, not its type
        config.target_modules = spec.default_targets(model)
        return
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in spec.default_targets:
        if getattr(config, "target_parameters", None):   # parameters alone are a target (PEFT)
            return
        raise ConfigError(f"Please specify `target_modules` in `peft_config`: it is not set and there is no "
                          f"{config.peft_type.value} default for model_type {model_type!r}; give names, a regex, "
                          f"or 'all-linear'")
    default = spec.default_targets[model_type]
    config.target_modules = default if isinstance(default, str) else list(default)   # a regex stays one string


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


def _saved_by_module(shapes: Optional[dict], matches: list[str]) -> dict[str, dict]:
    """{module path: {key below it: shape}} of a checkpoint's tensors, for the matched modules."""
    out: dict[str, dict] = {}
    if not shapes:
        return out
    targets = set(matches)
    for key, shape in shapes.items():
        parts = key.removeprefix("base_model.model.").split(".")
        for cut in range(len(parts) - 1, 0, -1):   # the longest module path that is a match
            path = ".".join(parts[:cut])
            if path in targets:
                out.setdefault(path, {})[".".join(parts[cut:])] = tuple(shape)
                break
    return out


def _rewrite(graph, fqn: str, config, spec, adapter_name: str, notes: list, leader: Optional[str] = None,
             saved: Optional[dict] = None) -> Rewrite:
    module = graph.nodes[fqn]["module"]
    wrapped = is_adapter_layer(module)
    base = module.get_base_layer() if wrapped else module
    handler = spec.handler_for(base, config, fqn)
    action = "wrap"
    if wrapped:
        if not isinstance(module, handler.layer):
            raise PlanError(f"{fqn} is already a {type(module).__name__} adapter layer; it cannot also take a "
                            f"{config.peft_type.value} adapter (one module holds adapters of one method)")
        if _holds(module, adapter_name):
            raise PlanError(f"adapter {adapter_name!r} already exists on {fqn}; pick another adapter_name "
                            f"or delete_adapter({adapter_name!r}) first")
        action = "add"
    params = spec.rewrite_params(RewriteSite(fqn, base, config, notes, saved or {}))
    if leader is not None:
        params = {**params, TIED_TO: leader}
    return Rewrite(path=fqn, base_type=type(base).__name__, base_shape=weight_shape(base),
                   method=config.peft_type.value, adapter_name=adapter_name,
                   layer_class=qualified_name(handler.layer), action=action,
                   added_params=spec.count(base, params, config), params=params, base_format=storage_label(base))


def _holds(layer: nn.Module, adapter_name: str) -> bool:
    """`adapter_name in layer.adapter_names()`, asked of each container rather than by listing every adapter the
    layer holds (a layer with 100 adapters would list 100 names for each one added)."""
    if type(layer).adapter_names is AdapterLayer.adapter_names:
        return any(adapter_name in holder for _, holder in layer.adapter_containers())
    return adapter_name in layer.adapter_names()


def _modules_to_save(graph, config, matches) -> list[SavedModule]:
    names = getattr(config, "modules_to_save", None) or []
    if not names:
        return []
    selector = Names(tuple(names))
    targeted = set(matches)
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
    """Biases that train besides the adapter: every bias ("all"), or the targeted layers' ("<method>_only")."""
    mode = getattr(config, "bias", "none") or "none"
    if mode == "all":  # every bias, except those of modules_to_save originals (their copies train instead)
        prefixes = tuple(f"{m.path}." for m in saved)
        return sum(p.numel() for n, p in model.named_parameters()
                   if (n == "bias" or n.endswith(".bias")) and not n.startswith(prefixes))
    if mode.endswith("_only"):
        total = 0
        for fqn in matches:
            module = model.get_submodule(fqn)
            base = module.get_base_layer() if is_adapter_layer(module) else module
            total += base.bias.numel() if getattr(base, "bias", None) is not None else 0
        return total
    return 0


def _resolve_targets(config, rule, graph, matches) -> None:
    """The config as it will be saved: all-linear / target_types expanded into module names."""
    if isinstance(rule.target, AllLinear) or isinstance(rule.types, Types):
        config.target_modules = minimal_names(list(matches), graph)
        if hasattr(config, "target_types"):
            config.target_types = None


def minimal_names(paths: list[str], graph) -> list[str]:
    """Leaf names if they select exactly `paths` among the graph's modules, else the full paths (sorted)."""
    leaves = sorted({p.rpartition(".")[2] for p in paths})
    selector = Names(tuple(leaves))
    selected = {fqn for fqn in graph.nodes if fqn and selector(fqn, graph.nodes[fqn])}
    return leaves if selected == set(paths) else sorted(paths)
