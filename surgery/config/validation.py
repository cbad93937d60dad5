"""Type and range checks for config fields, driven by the dataclass annotations.

Each failure raises ConfigError naming the key, the value and what would be valid.
"""
from __future__ import annotations

import enum
import typing
from typing import Any, Literal, Union

from ..errors import ConfigError


def describe(tp: Any) -> str:
    """A short human name for a type annotation ('int', 'list[str] or str', "'none', 'all'")."""
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple, set):
        args = typing.get_args(tp)
        return f"{origin.__name__}[{describe(args[0])}]" if args else origin.__name__
    if origin is dict:
        args = typing.get_args(tp)
        return f"dict[{describe(args[0])}, {describe(args[1])}]" if args else "dict"
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def conforms(value: Any, tp: Any) -> bool:
    """Whether `value` fits annotation `tp` (bool is not an int; an int is a float)."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin is Union:
        return any(conforms(value, a) for a in typing.get_args(tp))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin in (list, tuple, set):
        if not isinstance(value, (list, tuple, set)):
            return False
        args = typing.get_args(tp)
        return not args or all(conforms(v, args[0]) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            return False
        args = typing.get_args(tp)
        return not args or all(conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items())
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, tp) or any(value == m.value and type(value) is str for m in tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is Callable_:
        return value is None or callable(value)
    return isinstance(value, tp) if isinstance(tp, type) else True


Callable_ = typing.Callable


def check_type(owner: str, key: str, value: Any, tp: Any) -> None:
    if not conforms(value, tp):
        raise ConfigError(
            f"{owner}.{key} = {value!r} has type {type(value).__name__}; expected {describe(tp)}"
        )


def check_range(owner: str, key: str, value: Any, *, low=None, high=None, low_open=False, what: str = "") -> None:
    """Refuse a number outside [low, high] (or (low, high] with low_open), and NaN."""
    if value is None:
        return
    bad = value != value  # NaN is never in range
    bad = bad or (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high)
    if bad:
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else f"<= {high}"
        rule = " and ".join(x for x in (lo, hi) if x)
        raise ConfigError(f"{owner}.{key} = {value!r} is out of range; it must be {rule}{what}")
