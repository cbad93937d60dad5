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
import json
import logging
import os
import typing
import warnings

import packaging.version
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

from ..checkpoint.names import CONFIG_NAME, FORMAT_VERSION
from ..errors import ConfigError, ConfigTypeError, PeftWarning, UnsupportedOptionError, did_you_mean
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
                # PEFT overwrites it silently; a config class holds one method whatever was passed
                warnings.warn(f"{type(self).__name__}.peft_type = {self.peft_type!r} is replaced by "
                              f"{self._method.value!r}: this class only holds that method", PeftWarning, stacklevel=3)
            self.peft_type = self._method
        if self.peft_version is None:   # as PEFT: a config records the format version it was made for
            self.peft_version = _recorded_version()
        for f in dataclasses.fields(self):
            if f.metadata.get("unsupported"):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                _refuse_unless_default(type(self), f.name, getattr(self, f.name), default)
        self._check_types()
        for name in ("target_modules", "exclude_modules"):   # as PEFT: a list of names is held as a set
            if isinstance(getattr(self, name, None), list):
                setattr(self, name, set(getattr(self, name)))
        if self.task_type is not None:
            if self.task_type not in list(TaskType):   # PEFT's message, which code matches on
                raise ConfigError(f"Invalid task type: '{self.task_type}'. Must be one of the following task types: "
                                  f"{', '.join(t.value for t in TaskType)}. ({type(self).__name__}.task_type"
                                  f"{did_you_mean(str(self.task_type), [t.value for t in TaskType])})")
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
        unknown = []
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
                unknown.append(key)
        if unknown:   # one warning, PEFT's words first (code and tests match on them)
            warnings.warn(f"Unexpected keyword arguments {sorted(unknown)} for class {cls.__name__}, these are "
                          f"ignored. This probably means that the config was saved by a newer PEFT version "
                          f"(or another tool): "
                          f"{', '.join(repr(k) + did_you_mean(k, known) for k in sorted(unknown))}",
                          PeftWarning, stacklevel=3)
        return cls(**kwargs)

    # -- files (PEFT's API) ----------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Write adapter_config.json into `save_directory` (created if needed); atomic."""
        from ..checkpoint.atomic import atomic_write_text

        if os.path.isfile(save_directory):
            raise ConfigError(f"save_directory = {save_directory!r} is a file; pass a directory")
        os.makedirs(save_directory, exist_ok=True)
        data = self.to_dict()
        if kwargs.get("auto_mapping_dict") is not None:
            data["auto_mapping"] = kwargs["auto_mapping_dict"]
        atomic_write_text(Path(save_directory) / CONFIG_NAME, json.dumps(data, indent=2, sort_keys=True))

    def push_to_hub(self, repo_id: str, *, commit_message: Optional[str] = None,
                    commit_description: Optional[str] = None, private: Optional[bool] = None, token=None,
                    revision: Optional[str] = None, create_pr: bool = False, tags: Optional[list[str]] = None, **_):
        """Upload adapter_config.json to the Hub repo `repo_id` (created if needed); huggingface_hub's CommitInfo."""
        from ..checkpoint.push import push_folder

        return push_folder(self.save_pretrained, repo_id, default_message="Upload config",
                           commit_message=commit_message, commit_description=commit_description, private=private,
                           token=token, revision=revision, create_pr=create_pr, tags=tags)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs):
        """Load adapter_config.json from a directory or a Hub id (kwargs go to huggingface_hub); the class is
        the one its peft_type names, as in PEFT."""
        from ..checkpoint.io import read_config_dict, resolve_adapter_files

        hub = {k: v for k, v in kwargs.items() if k not in cls.field_names()}
        fields = {k: v for k, v in kwargs.items() if k in cls.field_names()}
        directory = resolve_adapter_files(pretrained_model_name_or_path, subfolder=subfolder, **hub)
        data = read_config_dict(directory)
        if "peft_type" not in data:
            raise ConfigTypeError(f"The {cls.__name__} config that is trying to be loaded is missing required keys: "
                                  f"{{'peft_type'}}. ({directory / CONFIG_NAME} is not a PEFT adapter config)")
        return cls.from_peft_type(**{**fields, **data})

    @classmethod
    def from_json_file(cls, path_json_file: str, **kwargs) -> dict:
        """The JSON object of a config file, as a dict (PEFT's API); a run-time-only key is dropped."""
        with open(path_json_file, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ConfigError(f"{path_json_file} must hold a JSON object, got {type(data).__name__}")
        if data.pop("runtime_config", None) is not None:
            warnings.warn(f"{path_json_file}: the runtime_config key is ignored (run-time options are not saved)",
                          PeftWarning, stacklevel=2)
        return data

    @classmethod
    def from_peft_type(cls, **kwargs) -> "PeftConfig":
        """The config class `peft_type` names (this class without one), built from kwargs; keys written by
        another PEFT version are dropped with a warning."""
        target = cls
        if kwargs.get("peft_type") is not None:
            target = _config_class(_as_enum(PeftType, kwargs["peft_type"], f"{cls.__name__}.peft_type"))
        return target.from_dict(kwargs, strict=False)

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


# The version a config records in peft_version: the PEFT on-disk format surgery writes. Module globals, read at
# call time, as in PEFT's peft.config (tests of version recording patch them).
__version__ = FORMAT_VERSION


def _get_commit_hash(pkg_name: str) -> Optional[str]:
    """The commit a dev install was built from; surgery records release format versions, which have none."""
    return None


def _recorded_version() -> str:
    """__version__, plus "@<commit>" for a dev version (ambiguous alone); never fails a config's creation."""
    version = __version__
    if packaging.version.Version(version).dev is None:
        return version
    try:
        commit = _get_commit_hash("peft") or "UNKNOWN"
    except Exception:
        warnings.warn("A dev version of PEFT is used but there was an error while trying to determine the commit "
                      "hash; peft_version records it as UNKNOWN", PeftWarning, stacklevel=3)
        commit = "UNKNOWN"
    return f"{version}@{commit}"


def _config_class(peft_type: PeftType) -> type:
    """The config class of a method (every method package defines one PeftConfig subclass with `_method`)."""
    pending = list(PeftConfig.__subclasses__())
    while pending:
        sub = pending.pop()
        if sub.__dict__.get("_method") == peft_type:
            return sub
        pending.extend(sub.__subclasses__())
    raise ConfigError(f"peft_type = {peft_type.value!r} is a PEFT method surgery does not implement yet")


def unsupported_field(default: Any) -> Any:
    """A PEFT field surgery does not implement yet: accepted (and saved) at its default, refused otherwise."""
    meta = {"unsupported": True, "unchecked": True, "help": "PEFT option not supported by surgery yet."}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _at_default(value: Any, default: Any) -> bool:
    return value == default or (value in (None, {}, [], False) and default in (None, {}, [], False))


def _check_inert(cls, key: str, value: Any) -> None:
    _refuse_unless_default(cls, key, value, cls._inert_keys[key])


def _refuse_unless_default(cls, key: str, value: Any, default: Any) -> None:
    if not _at_default(value, default):
        raise UnsupportedOptionError(
            f"{cls.__name__}.{key} = {value!r}: this PEFT option is not supported by surgery yet; "
            f"only its default {default!r} is accepted")


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
    if dataclasses.is_dataclass(value) and not isinstance(value, type):   # a sub-config: its fields, as PEFT's asdict
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value
