"""The library's error classes: every refusal names the field, the value and what would be valid."""
from __future__ import annotations

import difflib
from typing import Iterable


class PeftError(Exception):
    """PEFT's base error class (same name, so `except PeftError` written for PEFT catches ours)."""


class PeftWarning(UserWarning):
    """PEFT's base warning class: every warning surgery issues on purpose is one."""


class NoMatchingPeftModuleError(PeftError, ValueError):
    """PEFT's error for an adapter whose targets matched nothing in the base model."""


class SurgeryError(PeftError, ValueError):
    """Base class of every error `surgery` raises on purpose (a ValueError, as PEFT raises)."""


class ConfigError(SurgeryError):
    """A config key, type or value is invalid."""


class UnsupportedOptionError(ConfigError):
    """A PEFT config option surgery does not implement yet was set away from its default."""


class ConfigTypeError(ConfigError, TypeError):
    """A config cannot be built from what was given (PEFT raises TypeError here)."""


class TargetNotFoundError(SurgeryError, NoMatchingPeftModuleError):
    """A target selector matched no module of the model."""


class PlanError(SurgeryError):
    """A plan cannot be applied to this model (unsupported layer, conflicting options, ...)."""


class UnsupportedLayerError(PlanError, NotImplementedError):
    """A target layer of a kind the method cannot adapt (PEFT raises NotImplementedError for these)."""


class CheckpointError(SurgeryError):
    """An adapter on disk is missing, malformed or does not fit the model."""


class AdapterNameError(SurgeryError):
    """An adapter name is unsafe or unknown."""


class MethodAttributeError(ConfigError, AttributeError):
    """An attribute of another method's adapters (a name another method's injected state exposes); hasattr() sees False."""


class MergeError(SurgeryError):
    """A merge would produce non-finite weights or cannot be done."""


class UnsupportedTrainerError(PeftError, TypeError):
    """A trainer that does not know surgery's models (it would save full-model checkpoints)."""


def closest(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates closest to `word` (difflib ratio >= 0.5), best first."""
    return difflib.get_close_matches(str(word), list(candidates), n=n, cutoff=0.5)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' or '' when nothing is close."""
    found = closest(word, candidates, n=1)
    return f" (did you mean {found[0]!r}?)" if found else ""
