"""Configs from dicts, YAML/JSON files and bundled presets; `get_peft_config` as in PEFT."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

import yaml

from ..errors import ConfigError, did_you_mean
from ..methods.registry import get_method, implemented_types
from .base import PeftConfig

PRESET_SUFFIX = ".yaml"


def get_peft_config(config_dict: dict[str, Any]) -> PeftConfig:
    """Build the right config class from a dict holding `peft_type` (PEFT's API); the dict is not mutated."""
    return config_from_dict(config_dict, strict=True)


def config_from_dict(data: Any, *, strict: bool = True, where: str = "config") -> PeftConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(data).__name__}: {data!r:.80}")
    if "peft_type" not in data:
        raise ConfigError(f"{where} has no 'peft_type' key; add one of: "
                          f"{', '.join(t.value for t in implemented_types())}")
    spec = get_method(data["peft_type"])
    return spec.config_cls.from_dict(data, strict=strict)


def presets_dir() -> Path:
    """The folder of bundled YAML presets (installed as surgery._presets; the repo's rules/ in a checkout)."""
    try:
        import surgery._presets as presets

        return Path(next(iter(presets.__path__)))
    except (ImportError, StopIteration):
        return Path(__file__).resolve().parents[2] / "rules"


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob(f"*{PRESET_SUFFIX}"))


def load_config(source: Union[str, os.PathLike, dict, PeftConfig], *, strict: bool = True) -> PeftConfig:
    """A config from a config object (copied), a dict, a YAML/JSON file path, or a bundled preset name."""
    if isinstance(source, PeftConfig):
        return source.copy()
    if isinstance(source, dict):
        return config_from_dict(source, strict=strict)
    path = Path(source)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        path = path / "adapter_config.json"
    if not path.is_file():
        preset = presets_dir() / f"{source}{PRESET_SUFFIX}"
        if preset.is_file():
            path = preset
        else:
            names = preset_names()
            raise ConfigError(f"config {str(source)!r} is neither a file nor a bundled preset"
                              f"{did_you_mean(str(source), names)}; presets: {', '.join(names)}")
    return config_from_dict(read_mapping(path), strict=strict, where=str(path))


def read_mapping(path: Path) -> dict:
    """Parse a YAML or JSON file that must hold a mapping (YAML's safe loader: no object construction)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ConfigError(f"{path} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, got {type(data).__name__}")
    return data
