"""The golden cases, one module per method (`CASES = {name: spec}` in each); this package gathers them.

A spec: builder (a tests.support.tiny_models function), builder_kwargs, task_type, peft_model_class,
config (peft's config class name, default "LoraConfig"), adapters ({adapter name: config kwargs}, the first
one active), inputs (a function of cases.inputs), call ("kwargs" or "positional"), output_keys, notes, and
optionally perturb ({"scale": [name markers], "replace": [name markers]}: parameters whose name holds a
"scale" marker are multiplied by 1 + N(0, std), a "replace" marker set to N(0, std)), tolerance (the
surgery-vs-peft bound the load tests use, default 1e-6).
"""
from __future__ import annotations

import importlib
import pkgutil

CASES: dict[str, dict] = {}
for _info in pkgutil.iter_modules(__path__):
    if _info.name != "inputs":
        _module = importlib.import_module(f"{__name__}.{_info.name}")
        for _name, _spec in _module.CASES.items():
            if _name in CASES:
                raise ValueError(f"golden case {_name!r} is defined twice")
            CASES[_name] = {"perturb": getattr(_module, "PERTURB", None), "module": _info.name, **_spec}
