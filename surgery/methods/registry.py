"""The one registry of PEFT methods: peft_type -> MethodSpec.

Adding a method means one module exporting a MethodSpec and one line in `_SPECS` below.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..config.enums import PeftType
from ..errors import ConfigError


@dataclass(frozen=True)
class MethodSpec:
    """What the rule engine needs to know about one method."""

    peft_type: PeftType
    config_cls: type
    # (module, config, fqn) -> wrapper class or None when the method cannot wrap that module type.
    wrapper_for: Optional[Callable] = None
    # parameters added by one rewrite: (base module, rank, config) -> int
    added_params: Optional[Callable] = None
    # default target module names per transformers model_type
    default_targets: dict = field(default_factory=dict)
    is_prompt_learning: bool = False
    # Methods that inject state instead of wrapping modules plan themselves: (model, config, adapter) -> Plan.
    planner: Optional[Callable] = None
    # Methods whose checkpoint is not their layers' tensors (prompt learning):
    # (peft_model, adapter_name) -> {checkpoint key: (tensor to save, tensor to load into)}.
    state_entries: Optional[Callable] = None


# peft_type -> "module:attribute" of its MethodSpec, imported on first use (keeps `import surgery` fast).
_SPECS = {
    PeftType.LORA: "surgery.methods.lora.spec:LORA",
    PeftType.PROMPT_TUNING: "surgery.methods.prompt.spec:PROMPT_TUNING",
    PeftType.P_TUNING: "surgery.methods.prompt.spec:P_TUNING",
    PeftType.PREFIX_TUNING: "surgery.methods.prompt.spec:PREFIX_TUNING",
}


def get_method(peft_type) -> MethodSpec:
    try:
        key = PeftType(peft_type)
    except ValueError:
        valid = ", ".join(p.value for p in _SPECS)
        raise ConfigError(f"peft_type = {peft_type!r} does not exist; surgery implements: {valid}") from None
    if key not in _SPECS:
        valid = ", ".join(p.value for p in _SPECS)
        raise ConfigError(f"peft_type = {key.value!r} is a PEFT method surgery does not implement yet; "
                          f"implemented: {valid}")
    module_name, attr = _SPECS[key].split(":")
    return getattr(importlib.import_module(module_name), attr)


def implemented_types() -> list[PeftType]:
    return list(_SPECS)
