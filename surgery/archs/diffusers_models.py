"""diffusers model configs for planning: recognise them, check them, build their skeleton on the meta device.

A diffusers model component (``UNet2DConditionModel``, ``SD3Transformer2DModel``, ``FluxTransformer2DModel``, ...)
ships a ``config.json`` that has ``_class_name`` instead of transformers' ``model_type``. :func:`resolve_config`
hands such a dict here and gets back a :class:`DiffusersConfig`; :func:`build_meta_model` turns one into
``getattr(diffusers, class_name).from_config(values)`` built under ``torch.device("meta")``.

Only classes diffusers itself defines, and only model classes (``diffusers.ModelMixin`` subclasses), are built:
a pipeline's ``model_index.json`` or a custom component (``_class_name`` given as ``[module, class]``) is refused,
so no remote code ever runs. diffusers is imported only when such a config is met.

Errors are raised as ``ValueError`` with the offending field and value; :mod:`surgery.archs.resolve` adds
where the config came from and re-raises them as its ``ModelSourceError``.
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

__all__ = ["DiffusersConfig", "is_diffusers_config", "diffusers_config_from_dict", "build_diffusers_meta_model"]

# named in the message for an unknown _class_name
_EXAMPLES = ("UNet2DConditionModel", "SD3Transformer2DModel", "FluxTransformer2DModel", "AutoencoderKL")


@dataclass(frozen=True)
class DiffusersConfig:
    """A diffusers model component's ``config.json``, as :func:`resolve_config` returns it.

    ``class_name`` is the diffusers model class (``_class_name``), ``name_or_path`` where the config came from
    (a Hub id or a path, as transformers configs record it), and ``to_dict()`` a fresh copy of the raw dict.
    """

    class_name: str
    values: dict = field(repr=False, compare=False)
    name_or_path: Optional[str] = None

    @property
    def model_type(self) -> str:
        """The class name: what a transformers config's ``model_type`` says in messages and tables."""
        return self.class_name

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.values)


def is_diffusers_config(d: dict[str, Any]) -> bool:
    """True for a diffusers ``config.json`` (it names ``_class_name`` and has no transformers ``model_type``)."""
    return "_class_name" in d and not d.get("model_type")


def _diffusers():
    try:
        import diffusers
    except ImportError as exc:   # an optional dependency: only diffusers configs need it
        raise ValueError(f"this is a diffusers config, and diffusers is not installed ({exc}); "
                         f"pip install diffusers") from None
    return diffusers


def _model_class_names(diffusers) -> list[str]:
    """The names diffusers exports from its models package (read from its import table: importing them all
    to check would take seconds, and these only feed an error message)."""
    return sorted(getattr(diffusers, "_import_structure", {}).get("models", []))


def _model_class(class_name: Any) -> type:
    if isinstance(class_name, (list, tuple)):
        raise ValueError(f"_class_name = {list(class_name)!r} names a custom component (module, class), which "
                         f"needs remote code; surgery only builds diffusers' own model classes")
    if not isinstance(class_name, str) or not class_name:
        raise ValueError(f"_class_name = {class_name!r} must be the name of a diffusers model class, e.g. "
                         f"'UNet2DConditionModel'")
    diffusers = _diffusers()
    cls = getattr(diffusers, class_name, None)
    if isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin):
        return cls
    if isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline):
        raise ValueError(f"_class_name = {class_name!r} is a pipeline (model_index.json), not a model; pass the "
                         f"config.json of the component to plan, e.g. <pipeline>/unet/config.json or "
                         f"<pipeline>/transformer/config.json")
    names = _model_class_names(diffusers)
    close = difflib.get_close_matches(class_name, names, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    kind = "not a model class" if cls is not None else "not a class"
    examples = ", ".join(n for n in _EXAMPLES if n in names)
    raise ValueError(f"_class_name = {class_name!r} is {kind} of diffusers {diffusers.__version__}{hint} "
                     f"(model classes are e.g. {examples})")


def diffusers_config_from_dict(d: dict[str, Any], name_or_path: Optional[str] = None) -> DiffusersConfig:
    """Check a diffusers ``config.json`` dict (its class must be a diffusers model) and wrap it."""
    values = copy.deepcopy(d)
    cls = _model_class(values.get("_class_name"))
    values.pop("_name_or_path", None)
    return DiffusersConfig(class_name=cls.__name__, values=values, name_or_path=name_or_path)


def build_diffusers_meta_model(config: DiffusersConfig, task: Optional[str] = None) -> nn.Module:
    """``getattr(diffusers, config.class_name).from_config(values)`` on the meta device (no weights allocated).

    diffusers models have no task heads, so ``task`` must be None."""
    if task is not None:
        raise ValueError(f"task = {task!r} does not apply to the diffusers model {config.class_name}: it has no "
                         f"task heads; leave the task unset (no task_type in the config, no --task)")
    cls = _model_class(config.class_name)
    try:
        with torch.device("meta"):
            model = cls.from_config(config.to_dict())
    except (TypeError, ValueError, KeyError, AttributeError) as exc:   # a field of the wrong type or value
        raise ValueError(f"cannot build {config.class_name} from this config: {type(exc).__name__}: {exc}") from exc
    if config.name_or_path is not None:
        model.register_to_config(_name_or_path=config.name_or_path)
    return model.eval()
