"""Test-support internals PEFT's tests import, written for the shim (they hold no PEFT behaviour)."""
from __future__ import annotations

INCLUDE_LINEAR_LAYERS_SHORTHAND = "all-linear"
DUMMY_MODEL_CONFIG = {"model_type": "custom"}


def get_submodules(model, key: str):
    """(parent, target, target_name) of the module named `key`."""
    parent_name, _, target_name = key.rpartition(".")
    return model.get_submodule(parent_name), model.get_submodule(key), target_name


def infer_device() -> str:
    return "cpu"


def always_true() -> bool:
    return True


def always_false() -> bool:
    return False


def check_target_module_exists(config, key: str) -> bool:
    """PEFT's per-name test "does this config target the module called `key`?", answered by surgery's
    compiled rule (the one the planner matches with) on a module of unknown type."""
    from torch import nn

    from surgery.matching.rules import _selected, compile_rule

    rule = compile_rule(config, nn.Module())
    return _selected(rule, key, {"module": nn.Identity()}, set())
