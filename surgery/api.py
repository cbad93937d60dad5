"""The code entry points of the rule engine: plan (dry run) and apply_rules (plan, then mutate)."""
from __future__ import annotations

from typing import Optional, Union

from torch import nn

from .config.base import PeftConfig
from .errors import PlanError
from .methods.registry import get_method
from .plan.model import Plan
from .plan.planner import plan, plan_with_config
from .rewrite.apply import apply_plan


def resolved_config(p: Plan) -> PeftConfig:
    """The config object a plan applies (target_modules resolved), rebuilt from the plan's record."""
    return get_method(p.peft_type).config_cls.from_dict(p.config)


def apply_rules(model: nn.Module, cfg: Union[PeftConfig, dict, str], adapter_name: str = "default", *,
                active: Optional[list[str]] = None, strict_targets: bool = True) -> Plan:
    """Validate `cfg` against `model`, rewrite the model, and return the Plan that was applied.

    Every check runs before the first change: on error the model is exactly as it was.
    """
    p, config = plan_with_config(model, cfg, adapter_name, strict_targets=strict_targets)
    if get_method(config.peft_type).injector is not None:
        raise PlanError(f"{config.peft_type.value} adds inputs, not layers: its state lives on a PeftModel; use "
                        f"get_peft_model(model, config) instead of apply_rules")
    return apply_plan(model, p, config, active=active)


def inject_adapter_in_model(peft_config: PeftConfig, model: nn.Module, adapter_name: str = "default",
                            low_cpu_mem_usage: bool = False, state_dict: Optional[dict] = None) -> nn.Module:
    """PEFT's low-level API: add adapter layers to `model` in place and return it (no PeftModel).

    state_dict: adapt the modules its keys name (values unused), for checkpoints whose targets are unknown.
    Methods that add inputs (prompt learning) or share state across layers (VeRA) need get_peft_model."""
    spec = get_method(peft_config.peft_type)
    if spec.injector is not None or spec.shared_state is not None:
        why = "adds inputs, not layers" if spec.injector is not None else "uses shared state across its layers"
        raise PlanError(f"inject_adapter_in_model: {spec.label} {why}, which lives on a PeftModel; use "
                        f"get_peft_model(model, config) instead")
    spec.tuner_cls(model, peft_config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
    return model


__all__ = ["plan", "apply_rules", "resolved_config", "inject_adapter_in_model"]
