"""Bundled architecture configs and meta-device model building for planning without weights.

``surgery.archs`` ships the ``config.json`` of a few well-known Hub models (see :func:`bundled_names`)
and resolves any model source (bundled name, local directory, ``config.json`` path or Hub id) to a
``transformers`` config (or, for a diffusers component, a :class:`DiffusersConfig`), then builds the model skeleton on the ``meta`` device in well under a second
for most models, so planners and auditors can inspect module names and shapes of a 70B model on a laptop.
"""
from .diffusers_models import DiffusersConfig
from .resolve import (
    TASK_TO_AUTO_CLASS,
    ModelSourceError,
    build_meta_model,
    bundled_config_dict,
    bundled_names,
    load_model_for_planning,
    resolve_config,
)

__all__ = [
    "DiffusersConfig",
    "TASK_TO_AUTO_CLASS",
    "ModelSourceError",
    "build_meta_model",
    "bundled_config_dict",
    "bundled_names",
    "load_model_for_planning",
    "resolve_config",
]
