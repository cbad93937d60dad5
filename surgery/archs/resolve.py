"""Resolve a model source to a config and build its skeleton on the meta device.

A *source* is one of, tried in this order:

1. a bundled architecture name (see :func:`bundled_names`), matched case-insensitively;
2. a path to a local Hugging Face model directory holding ``config.json``;
3. a path to a ``config.json`` file (any file name ending in ``.json``);
4. a Hub id (``org/name``), of which only ``config.json`` is fetched with
   :func:`huggingface_hub.hf_hub_download`, so it works from the local cache when ``HF_HUB_OFFLINE=1``.
   If the Hub and the cache both fail and the id is the Hub id of a bundled architecture (and no
   revision was asked for), the bundled config is used instead.

Remote code is never executed: configs are built with ``trust_remote_code=False`` and model classes
come from ``transformers`` itself.

A diffusers component's ``config.json`` (``_class_name``, no ``model_type``: a UNet or a diffusion
transformer) resolves, from any of these sources, to a :class:`~surgery.archs.diffusers_models.DiffusersConfig`
instead of a ``PretrainedConfig``, and :func:`build_meta_model` builds its diffusers class (see
``diffusers_models.py``).
"""
from __future__ import annotations

import difflib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SurgeryError
from ..tasks import TASKS
from .diffusers_models import (DiffusersConfig, build_diffusers_meta_model, diffusers_config_from_dict,
                               is_diffusers_config)

__all__ = [
    "ModelSourceError",
    "TASK_TO_AUTO_CLASS",
    "bundled_names",
    "bundled_config_dict",
    "resolve_config",
    "build_meta_model",
    "load_model_for_planning",
]

_ARCH_DIR = Path(__file__).resolve().parent

# PEFT task type -> name of the transformers Auto class that builds it (from the task table).
TASK_TO_AUTO_CLASS: dict[str, str] = {t.value: task.auto_class for t, task in TASKS.items()}


class ModelSourceError(SurgeryError):
    """A model source could not be resolved to a config or built into a model."""


# --------------------------------------------------------------------------- bundled configs


@lru_cache(maxsize=None)
def _bundled_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(_ARCH_DIR.glob("*.json"))}


def bundled_names() -> list[str]:
    """Names of the bundled architectures, sorted."""
    return sorted(_bundled_files())


def _bundled_key(name: str) -> str | None:
    files = _bundled_files()
    if name in files:
        return name
    lowered = {k.lower(): k for k in files}
    return lowered.get(name.lower())


@lru_cache(maxsize=None)
def _bundled_hub_ids() -> dict[str, str]:
    """Hub id (lower-cased) -> bundled name, from each bundled config's ``_name_or_path``."""
    out: dict[str, str] = {}
    for name in _bundled_files():
        hub_id = bundled_config_dict(name).get("_name_or_path")
        if hub_id:
            out[hub_id.lower()] = name
    return out


def bundled_config_dict(name: str) -> dict[str, Any]:
    """A fresh copy of the raw ``config.json`` dict of a bundled architecture."""
    key = _bundled_key(name)
    if key is None:
        raise ModelSourceError(_unknown_message(name))
    with open(_bundled_files()[key], encoding="utf-8") as fh:
        return json.load(fh)


# --------------------------------------------------------------------------- config loading


def _unknown_message(source: str, detail: str | None = None) -> str:
    names = bundled_names()
    close = difflib.get_close_matches(source.lower(), names, n=1, cutoff=0.6)
    if not close:  # "meta-llama/Llama-2-7b-hf"-like ids: compare the last path part too
        close = difflib.get_close_matches(source.rsplit("/", 1)[-1].lower(), names, n=1, cutoff=0.6)
    msg = (f"unknown model {source!r}: not a bundled architecture, a local directory, "
           f"a config.json or a cached Hub id")
    if close:
        msg += f"; did you mean {close[0]!r}?"
    msg += f" Bundled: {', '.join(names)}"
    if detail:
        msg += f" ({detail})"
    return msg


def _config_from_dict(d: dict[str, Any], name_or_path: str | None, origin: str):
    from transformers import AutoConfig

    if is_diffusers_config(d):
        return _diffusers_config(d, name_or_path, origin)
    d = dict(d)
    model_type = d.pop("model_type", None)
    if not model_type:
        raise ModelSourceError(f"{origin}: config has no 'model_type'; cannot pick a transformers config class")
    if d.get("auto_map") and model_type not in _known_model_types():
        raise ModelSourceError(
            f"{origin}: model_type {model_type!r} needs remote code (auto_map), which surgery never executes")
    d.pop("_name_or_path", None)
    try:
        config = AutoConfig.for_model(model_type, **d)
    except ValueError as exc:  # unknown model_type
        raise ModelSourceError(f"{origin}: {exc}") from exc
    if name_or_path:
        config.name_or_path = name_or_path
    return config


def _diffusers_config(d: dict[str, Any], name_or_path: str | None, origin: str) -> DiffusersConfig:
    try:
        return diffusers_config_from_dict(d, name_or_path)
    except ValueError as exc:
        raise ModelSourceError(f"{origin}: {exc}") from exc


@lru_cache(maxsize=1)
def _known_model_types() -> frozenset[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return frozenset(CONFIG_MAPPING.keys())


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"cannot read config {str(path)!r}: {exc}") from exc
    if not isinstance(d, dict):
        raise ModelSourceError(f"config {str(path)!r} is not a JSON object")
    return d


def _looks_like_path(source: str) -> bool:
    """True for sources that cannot be a Hub id (``org/name`` has at most one slash)."""
    return (source.startswith((".", "~", "/", "\\")) or source.endswith(".json")
            or "\\" in source or source.count("/") > 1)


def _from_directory(path: Path):
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelSourceError(f"local directory {str(path)!r} has no config.json")
    from transformers import AutoConfig

    d = _load_json(cfg_file)
    if is_diffusers_config(d):
        return _diffusers_config(d, str(path), str(path))
    if d.get("auto_map") and d.get("model_type") not in _known_model_types():
        raise ModelSourceError(
            f"{str(path)!r}: model_type {d.get('model_type')!r} needs remote code (auto_map), "
            "which surgery never executes")
    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except (ValueError, OSError, KeyError) as exc:
        raise ModelSourceError(f"cannot load config from {str(path)!r}: {exc}") from exc


def _from_hub(repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None):
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hf_errors

    hub_errors: tuple[type[BaseException], ...] = (
        OSError, ValueError,  # LocalEntryNotFoundError, EntryNotFoundError, HFValidationError, ...
        getattr(hf_errors, "HfHubHTTPError", OSError),
        getattr(hf_errors, "OfflineModeIsEnabled", OSError),
    )
    kwargs = dict(revision=revision, cache_dir=None if cache_dir is None else str(cache_dir))
    try:
        # The local cache first: no network round trip (and no retries) for ids already cached.
        cfg_file = hf_hub_download(repo_id, "config.json", local_files_only=True, **kwargs)
    except hub_errors:
        if "/" not in repo_id:
            # Every Hub model id today is "org/name": a bare word is a typo of a bundled name or a path.
            return None, "not a cached Hub id (Hub ids look like org/name)"
        try:
            cfg_file = hf_hub_download(repo_id, "config.json", **kwargs)
        except hub_errors as exc:
            return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    return _config_from_dict(_load_json(Path(cfg_file)), repo_id, f"Hub id {repo_id!r}"), None


def resolve_config(source: str | os.PathLike, revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None):
    """Resolve *source* to a ``transformers.PretrainedConfig``, or a ``DiffusersConfig`` for a diffusers
    component (see the module docstring for the order).

    ``revision`` and ``cache_dir`` only apply to Hub ids. Raises :class:`ModelSourceError` when
    nothing matches; its message names the closest bundled architecture.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise ModelSourceError(f"model source must be a non-empty string or path, got {source!r}")
    source = source.strip()

    key = _bundled_key(source)
    if key is not None:
        d = bundled_config_dict(key)
        return _config_from_dict(d, d.get("_name_or_path") or key, f"bundled {key!r}")

    path = Path(source).expanduser()
    if path.is_dir():
        return _from_directory(path)
    if path.is_file():
        d = _load_json(path)
        return _config_from_dict(d, str(path.parent) if path.name == "config.json" else str(path), str(path))
    if _looks_like_path(source):
        raise ModelSourceError(_unknown_message(source, f"no such file or directory: {str(path)!r}"))

    config, detail = _from_hub(source, revision, cache_dir)
    if config is not None:
        return config
    bundled = _bundled_hub_ids().get(source.lower())
    if bundled is not None and revision is None:
        d = bundled_config_dict(bundled)
        return _config_from_dict(d, d.get("_name_or_path") or bundled, f"bundled {bundled!r}")
    raise ModelSourceError(_unknown_message(source, detail))


# --------------------------------------------------------------------------- meta models


def _normalise_task(task: Any) -> str | None:
    if task is None:
        return None
    name = str(getattr(task, "value", task)).strip().upper()
    if name not in TASK_TO_AUTO_CLASS:
        raise ModelSourceError(f"unknown task {task!r}; expected one of {', '.join(TASK_TO_AUTO_CLASS)} or None")
    return name


def _model_class(config, task: str | None):
    import transformers

    if task is not None:
        return getattr(transformers, TASK_TO_AUTO_CLASS[task]), True
    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls, False
    return transformers.AutoModel, True


def build_meta_model(config, task: str | None = None) -> nn.Module:
    """Instantiate the model for *config* on the meta device (no weights are allocated).

    With ``task`` (a PEFT task type name or ``peft.TaskType``) the matching Auto class decides the
    class; without it ``config.architectures[0]`` does, falling back to ``AutoModel``. A ``DiffusersConfig``
    builds its diffusers class (no task applies).
    """
    task_name = _normalise_task(task)
    if isinstance(config, DiffusersConfig):
        try:
            return build_diffusers_meta_model(config, task_name)
        except ValueError as exc:
            raise ModelSourceError(str(exc)) from exc
    cls, is_auto = _model_class(config, task_name)
    try:
        with torch.device("meta"):
            model = cls.from_config(config) if is_auto else cls._from_config(config)
    except (ValueError, KeyError) as exc:  # e.g. AutoModelForSeq2SeqLM on a decoder-only config
        raise ModelSourceError(
            f"cannot build {cls.__name__} for model_type {getattr(config, 'model_type', '?')!r}"
            f"{f' (task {task_name})' if task_name else ''}: {exc}") from exc
    return model.eval()


def load_model_for_planning(source: str | os.PathLike, task: str | None = None, revision: str | None = None,
                            cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """``build_meta_model(resolve_config(source, revision, cache_dir), task)``."""
    return build_meta_model(resolve_config(source, revision=revision, cache_dir=cache_dir), task)
