"""PEFT's transformers-v5 config conversion for MoE models (LoRA only), run before the default targets.

transformers 5 fused the experts of many MoE architectures into 3-D parameters and turned their routers into
custom modules; PEFT 0.21.2 rewrites a LoRA config written for the v4 layout so it still targets them. For a model
whose type has a checkpoint conversion in transformers and whose conversion family is Mixtral's or Qwen2-MoE's
(Mixtral, Qwen3-MoE, DeepSeek-V2/V3, OLMoE, GLM-4-MoE, ... ), each target_modules name ending in a v4 name moves to
target_parameters:

    mixtral:    gate -> gate.weight,  w1, w3 -> gate_up_proj,  w2 -> down_proj
    qwen2_moe:  gate -> gate.weight,  gate_proj, up_proj -> gate_up_proj,  down_proj -> down_proj

Both halves of a fused pair must be named (else PEFT's ValueError); when they are, the fused parameter gets rank
and alpha x 2 through rank_pattern / alpha_pattern (".*\\.gate_up_proj"), so alpha / r stays. target_modules None
becomes the empty set (no default targets then, as in PEFT), a regex or "all-linear" is first resolved into the
leaf names it selects (all-linear: the Linear layers' names plus every v4 name). Loading adapters saved with v4
keys (their tensors' conversion) is not done here.
"""
from __future__ import annotations

import re
from typing import Optional

from ...errors import ConfigError
from ...graph.walk import module_graph
from ...matching.selectors import AllLinear, output_head_names

_TARGETS = {
    "mixtral": {"gate": "gate.weight", "w1": "gate_up_proj", "w3": "gate_up_proj", "w2": "down_proj"},
    "qwen2_moe": {"gate": "gate.weight", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj",
                  "down_proj": "down_proj"},
}
_FUSED = {"mixtral": {"gate_up_proj": ("w1", "w3")}, "qwen2_moe": {"gate_up_proj": ("gate_proj", "up_proj")}}


def conversion_family(model) -> Optional[str]:
    """"mixtral" / "qwen2_moe" for a model PEFT converts configs for, else None."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        return None
    try:
        from transformers.conversion_mapping import _MODEL_TO_CONVERSION_PATTERN, get_checkpoint_conversion_mapping
    except ImportError:   # transformers < 5: nothing was fused
        return None
    family = "mixtral" if model_type == "mixtral" else _MODEL_TO_CONVERSION_PATTERN.get(model_type)
    if family not in _TARGETS or get_checkpoint_conversion_mapping(model_type) is None:
        return None
    return family


def _resolved(config, model, mapping: dict) -> set:
    """The leaf names a string target_modules selects (PEFT resolves it before remapping)."""
    graph = module_graph(model)
    if config.target_modules.lower() == "all-linear":
        select = AllLinear(output_head_names(model, config.task_type))
        return {fqn.rpartition(".")[2] for fqn, node in graph.nodes(data=True) if select(fqn, node)} | set(mapping)
    pattern = config.target_modules
    params = {f"{fqn}.{p}" if fqn else p: fqn for fqn, node in graph.nodes(data=True) for p in node["shapes"]}
    keys = [fqn for fqn in graph.nodes if fqn] + list(params)
    matched = {key.rpartition(".")[2] for key in keys if re.fullmatch(pattern, key)}
    for old, new in mapping.items():   # v4 names inside a fused parameter's module: probe "<module>.<v4 name>"
        holders = {fqn for key, fqn in params.items() if key.rpartition(".")[2] == new}
        if old not in matched and any(re.fullmatch(pattern, f"{fqn}.{old}") for fqn in holders):
            matched.add(old)
    return matched


def convert_moe_targets(config, model) -> list[str]:
    """Rewrite `config` (the planner's copy) in place as PEFT does for transformers-v5 MoE models; returns the
    plan's note saying what moved."""
    family = conversion_family(model)
    if family is None or getattr(config, "target_types", None):   # class-name targets name no v4 module
        return []
    mapping, fused = _TARGETS[family], _FUSED[family]
    if isinstance(config.target_modules, str):
        resolved = _resolved(config, model, mapping)
        if not resolved:   # nothing matched: the plan's not-found error says so
            return []
        config.target_modules = resolved
    config.rank_pattern = dict(config.rank_pattern or {})
    config.alpha_pattern = dict(config.alpha_pattern or {})
    parameters = list(config.target_parameters or [])
    remaining, named = set(), {new: set() for new in fused}
    for target in config.target_modules or ():
        old = next((o for o in mapping if target == o or target.endswith(f".{o}")), None)
        if old is None:
            remaining.add(target)
            continue
        parameters += [mapping[old]] if mapping[old] not in parameters else []
        if mapping[old] in fused:
            named[mapping[old]].add(old)
    doubled = []
    for new, parts in fused.items():
        present = named[new]
        if 0 < len(present) < len(parts):   # PEFT's words
            missing = ", ".join(sorted(set(parts) - present))
            raise ConfigError(f"Cannot convert PEFT target(s) {', '.join(sorted(present))} without also targeting "
                              f"{missing} because they are fused into {new}. (target_modules: this "
                              f"{model.config.model_type} model holds them as one fused parameter per layer, "
                              f"{new}; name both halves, or target_parameters=['{new}'])")
        if len(present) == len(parts):   # the fused parameter holds both halves: rank and alpha double
            config.rank_pattern[rf".*\.{re.escape(new)}"] = config.r * len(parts)
            config.alpha_pattern[rf".*\.{re.escape(new)}"] = config.lora_alpha * len(parts)
            doubled.append(new)
    moved = sorted(set(config.target_modules or ()) - remaining)
    config.target_parameters = parameters
    config.target_modules = remaining
    if not moved:
        return []
    return [f"target_modules {moved} name {model.config.model_type} layers that transformers 5 fused into parameters: "
            f"as PEFT does, they are adapted as target_parameters {parameters}"
            + (f" (rank and alpha x 2 on the fused {', '.join(doubled)})" if doubled else "")]
