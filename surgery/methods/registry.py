"""The one registry of PEFT methods: peft_type -> "package:attribute" of its MethodSpec.

Adding a method is one folder under surgery/methods/ and one line in `_SPECS`. Specs are imported on first
use; `public_names` gathers what each method package exports (its config class, tuner class, ...).
"""
from __future__ import annotations

import functools
import importlib
from typing import Callable

from ..config.enums import PeftType
from ..errors import ConfigError
from .spec import MethodSpec

_SPECS = {
    PeftType.LORA: "surgery.methods.lora:SPEC",
    PeftType.PROMPT_TUNING: "surgery.methods.prompt:PROMPT_TUNING",
    PeftType.P_TUNING: "surgery.methods.prompt:P_TUNING",
    PeftType.PREFIX_TUNING: "surgery.methods.prompt:PREFIX_TUNING",
    PeftType.OFT: "surgery.methods.oft:SPEC",
    PeftType.FOURIERFT: "surgery.methods.fourierft:SPEC",
    PeftType.IA3: "surgery.methods.ia3:SPEC",
    PeftType.HRA: "surgery.methods.hra:SPEC",
    PeftType.VERA: "surgery.methods.vera:SPEC",
    PeftType.LOKR: "surgery.methods.lokr:SPEC",
    PeftType.LOHA: "surgery.methods.loha:SPEC",
    PeftType.TRAINABLE_TOKENS: "surgery.methods.trainable_tokens:SPEC",
    PeftType.LN_TUNING: "surgery.methods.ln_tuning:SPEC",
    PeftType.BOFT: "surgery.methods.boft:SPEC",
}


def get_method(peft_type) -> MethodSpec:
    try:
        key = PeftType(peft_type)
    except ValueError:
        raise ConfigError(f"peft_type = {peft_type!r} does not exist; surgery implements: {_implemented()}") from None
    if key not in _SPECS:
        raise ConfigError(f"peft_type = {key.value!r} is a PEFT method surgery does not implement yet; "
                          f"implemented: {_implemented()}")
    module_name, attr = _SPECS[key].split(":")
    return getattr(importlib.import_module(module_name), attr)


def implemented_types() -> list[PeftType]:
    return list(_SPECS)


def exposed_by(attribute: str) -> list[PeftType]:
    """The methods whose injected state gives a PeftModel this attribute (e.g. get_prompt: prompt learning)."""
    return [t for t in _SPECS if get_method(t).injector is not None and attribute in get_method(t).injector.exposed]


@functools.lru_cache(maxsize=None)
def model_api() -> dict[str, Callable]:
    """{name: fn(model, ...)}: calls PEFT offers on every PeftModel and tuner that one method owns (its spec's
    model_api), e.g. whether the adapters convert to that method."""
    out: dict[str, Callable] = {}
    for peft_type in _SPECS:
        out.update(get_method(peft_type).model_api)
    return out


def public_names() -> dict[str, object]:
    """{name: object} of everything the method packages export (their `__all__`), for surgery's namespace."""
    out: dict[str, object] = {}
    for target in dict.fromkeys(v.split(":")[0] for v in _SPECS.values()):
        module = importlib.import_module(target)
        out.update({name: getattr(module, name) for name in module.__all__})
    return out


def peft_type_mappings() -> dict[str, dict]:
    """PEFT's PEFT_TYPE_TO_CONFIG_MAPPING / _TUNER_MAPPING / _PREFIX_MAPPING ({PeftType: ...}; PeftType is a str
    enum, so "LORA" finds PeftType.LORA). Tuners exist for methods that add layers, as in PEFT."""
    configs, tuners, prefixes = {}, {}, {}
    for peft_type in _SPECS:
        spec = get_method(peft_type)
        configs[peft_type] = spec.config_cls
        if spec.injector is None and spec.tuner_cls is not None and spec.tuner_cls.prefix:
            tuners[peft_type] = spec.tuner_cls
            prefixes[peft_type] = spec.tuner_cls.prefix
    return {"PEFT_TYPE_TO_CONFIG_MAPPING": configs, "PEFT_TYPE_TO_TUNER_MAPPING": tuners,
            "PEFT_TYPE_TO_PREFIX_MAPPING": prefixes}


def _implemented() -> str:
    return ", ".join(p.value for p in _SPECS)
