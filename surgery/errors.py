"""The library's error classes: every refusal names the field, the value and what would be valid."""
from __future__ import annotations

import difflib
from typing import Iterable


class SurgeryError(ValueError):
    """Base class of every error `surgery` raises on purpose (a ValueError, as PEFT raises)."""


class ConfigError(SurgeryError):
    """A config key, type or value is invalid."""


class TargetNotFoundError(SurgeryError):
    """A target selector matched no module of the model."""


class PlanError(SurgeryError):
    """A plan cannot be applied to this model (unsupported layer, conflicting options, ...)."""


class CheckpointError(SurgeryError):
    """An adapter on disk is missing, malformed or does not fit the model."""


class AdapterNameError(SurgeryError):
    """An adapter name is unsafe or unknown."""


class MethodAttributeError(ConfigError, AttributeError):
    """An attribute of another method's adapters (a name another method's injected state exposes); hasattr() sees False."""


class MergeError(SurgeryError):
    """A merge would produce non-finite weights or cannot be done."""


def closest(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates closest to `word` (difflib ratio >= 0.5), best first."""
    return difflib.get_close_matches(str(word), list(candidates), n=n, cutoff=0.5)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' or '' when nothing is close."""
    found = closest(word, candidates, n=1)
    return f" (did you mean {found[0]!r}?)" if found else ""
