"""PeftConfig: the base of every method's config, with PEFT's field names, validation and JSON round trip.

Configs validate on construction, so a bad value fails where it is written. `from_dict` adds what a file
needs: unknown keys are refused with the closest valid key (strict) or dropped with a warning (lenient,
used for adapter_config.json written by other PEFT versions, as PEFT does).
"""
from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import logging
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union

from ..errors import ConfigError, did_you_mean
from .enums import PeftType, TaskType
from .validation import check_type

logger = logging.getLogger(__name__)


@dataclass
class PeftConfig:
    """Fields shared by every PEFT method (names and defaults as in PEFT)."""

    task_type: Optional[Union[str, TaskType]] = field(default=None, metadata={"help": "The type of task."})
    peft_type: Optional[Union[str, PeftType]] = field(default=None, metadata={"help": "The PEFT method."})
    auto_mapping: Optional[dict] = field(default=None, metadata={"help": "Class that built the base model."})
    peft_version: Optional[str] = field(default=None, metadata={"help": "Version that wrote the config."})
    base_model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Base model id or path."})
    revision: Optional[str] = field(default=None, metadata={"help": "Base model revision."})
    inference_mode: bool = field(default=False, metadata={"help": "Freeze the adapter (inference only)."})

    # Keys PEFT writes that surgery accepts only at their default value: {key: default}.
    _inert_keys: ClassVar[dict[str, Any]] = {}
    # Keys older PEFT versions wrote and that no longer mean anything; accepted and dropped silently.
    _legacy_keys: ClassVar[frozenset[str]] = frozenset()
    # Keys never written to adapter_config.json (surgery extensions resolved at plan time, run-time options).
    _unsaved_keys: ClassVar[tuple[str, ...]] = ()
    _method: ClassVar[Optional[PeftType]] = None

    def __post_init__(self) -> None:
        if self._method is not None:
            if self.peft_type not in (None, self._method, self._method.value):
                raise ConfigError(
                    f"{type(self).__name__}.peft_type = {self.peft_type!r}; this class only holds {self._method.value!r}"
                )
            self.peft_type = self._method
        self._check_types()
        if self.task_type is not None:
            self.task_type = _as_enum(TaskType, self.task_type, f"{type(self).__name__}.task_type")
        if self.peft_type is not None:
            self.peft_type = _as_enum(PeftType, self.peft_type, f"{type(self).__name__}.peft_type")
        self.validate()

    # -- hooks -----------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Range and consistency checks of a method; called after the type checks."""

    @property
    def is_prompt_learning(self) -> bool:
        return False

    @property
    def is_adaption_prompt(self) -> bool:
        return False

    # -- dict / JSON -----------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: enums as their string values, sets as lists, inert PEFT keys at their defaults."""
        out = {k: _jsonable(getattr(self, k)) for k in self.field_names()}
        for key, default in self._inert_keys.items():
            out.setdefault(key, copy.deepcopy(default))
        for key in self._unsaved_keys:
            out.pop(key, None)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, strict: bool = True) -> "PeftConfig":
        """Build and validate from a mapping; never mutates `data`."""
        if not isinstance(data, dict):
            raise ConfigError(f"a {cls.__name__} must be a mapping of keys to values, got {type(data).__name__}")
        known = set(cls.field_names())
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in known:
                kwargs[key] = copy.deepcopy(value)
            elif key in cls._inert_keys:
                _check_inert(cls, key, value)
            elif key in cls._legacy_keys:
                continue
            elif strict:
                raise ConfigError(
                    f"unknown key {key!r} = {value!r} for {cls.__name__}{did_you_mean(key, known)}; "
                    f"valid keys: {', '.join(sorted(known))}"
                )
            else:
                logger.warning("ignoring unknown key %r in %s (written by another PEFT version?)", key, cls.__name__)
        return cls(**kwargs)

    def copy(self) -> "PeftConfig":
        return copy.deepcopy(self)

    def _check_types(self) -> None:
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            if f.metadata.get("unchecked"):
                continue
            check_type(type(self).__name__, f.name, getattr(self, f.name), hints[f.name])


@functools.lru_cache(maxsize=None)
def _type_hints(cls) -> dict:
    """Resolved field annotations, once per class (resolving them costs ~0.4 ms, on every config)."""
    return typing.get_type_hints(cls)


def _check_inert(cls, key: str, value: Any) -> None:
    default = cls._inert_keys[key]
    if value == default or (value in (None, {}, [], False) and default in (None, {}, [], False)):
        return
    raise ConfigError(
        f"{cls.__name__}.{key} = {value!r}: this PEFT option is not supported by surgery; "
        f"only its default {default!r} is accepted"
    )


def _as_enum(kind: type[enum.Enum], value: Any, where: str):
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        valid = [m.value for m in kind]
        raise ConfigError(f"{where} = {value!r} is not valid{did_you_mean(str(value), valid)}; "
                          f"valid values: {', '.join(valid)}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
