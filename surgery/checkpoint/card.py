"""Model cards: create one, or update an existing card's metadata while keeping its text."""
from __future__ import annotations

from pathlib import Path

import yaml

from .atomic import atomic_write_text

DEFAULT_BODY = "\n# Adapter\n\nA parameter-efficient adapter saved by surgery in the PEFT format.\n"
QUANTIZATION_PREFIX = "The following `bitsandbytes` quantization config was used during training:"   # PEFT's


def update_model_card(directory: Path, *, base_model: str | None, method: str, version: str,
                      quantization: dict | None = None) -> None:
    path = Path(directory) / "README.md"
    meta, body = {}, DEFAULT_BODY
    if path.is_file():
        meta, body = split_front_matter(path.read_text(encoding="utf-8"))
    meta["library_name"] = "peft"
    if base_model:
        meta["base_model"] = base_model
    tags = list(meta.get("tags") or [])
    for tag in ([f"base_model:adapter:{base_model}"] if base_model else []) + [method.lower(), "transformers", "surgery"]:
        if tag not in tags:
            tags.append(tag)
    meta["tags"] = tags
    lines = [line for line in body.splitlines() if not line.startswith("- surgery ")]
    if "## Framework versions" not in body:
        lines += ["", "## Framework versions", ""]
    lines.append(f"- surgery {version}")
    if quantization and QUANTIZATION_PREFIX not in lines:   # PEFT's section, once
        lines += ["", "## Training procedure", "", QUANTIZATION_PREFIX]
        lines += [f"- {name}: {value}" for name, value in quantization.items()]
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + "\n".join(lines).rstrip() + "\n"
    atomic_write_text(path, text)


def add_card_tags(directory, tags: list[str]) -> None:
    """Add tags to the card's metadata (a card is created if there is none), keeping its text."""
    path = Path(directory) / "README.md"
    meta, body = split_front_matter(path.read_text(encoding="utf-8")) if path.is_file() else ({}, DEFAULT_BODY)
    meta["tags"] = list(dict.fromkeys([*(meta.get("tags") or []), *tags]))
    atomic_write_text(path, "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + body.rstrip() + "\n")


def split_front_matter(text: str) -> tuple[dict, str]:
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            try:
                meta = yaml.safe_load(text[4:end]) or {}
            except yaml.YAMLError:
                meta = {}
            if isinstance(meta, dict):
                return meta, text[end + 4:].lstrip("\n")
    return {}, text
