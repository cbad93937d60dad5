"""Adapter directories in PEFT's format: adapter_config.json + adapter_model.safetensors (+ README.md).

Saving writes each file atomically (temp file + os.replace). Loading reads .bin only with
torch.load(weights_only=True): no pickle from a stranger ever runs code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .hub import download_adapter
from .names import BIN_NAME, CONFIG_NAME, FORMAT_VERSION, SAFETENSORS_NAME
from .transaction import JOURNAL, commit_files, folder_lock, recover


def adapter_dir(save_directory: os.PathLike, adapter_name: str) -> Path:
    """PEFT's layout: the default adapter at the top, others in a subfolder named after them."""
    root = Path(save_directory)
    return root if adapter_name == "default" else root / adapter_name


def write_adapter(directory: Path, config_dict: dict, tensors: dict[str, torch.Tensor],
                  safe_serialization: bool = True) -> None:
    """Weights and config replaced as one crash-safe commit (see transaction.py)."""
    # safetensors refuses shared storage: give every tensor its own contiguous copy on the CPU.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    text = json.dumps(config_dict, indent=2, sort_keys=True) + "\n"

    def write_config(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    if safe_serialization:
        weights = {SAFETENSORS_NAME: lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})}
    else:
        weights = {BIN_NAME: lambda tmp: torch.save(tensors, tmp)}
    commit_files(Path(directory), {**weights, CONFIG_NAME: write_config})


def saved_config_dict(config, base_model_name_or_path: Optional[str], revision: Optional[str]) -> dict:
    data = config.to_dict()
    data["inference_mode"] = True
    data["peft_version"] = FORMAT_VERSION
    if base_model_name_or_path is not None and not data.get("base_model_name_or_path"):
        data["base_model_name_or_path"] = base_model_name_or_path
    if revision is not None:
        data["revision"] = revision
    return data


def safe_subfolder(subfolder: Optional[str]) -> Optional[str]:
    """Refuse a subfolder that could leave the adapter directory or snapshot."""
    if not subfolder:
        return None
    parts = Path(subfolder).parts
    if Path(subfolder).is_absolute() or ".." in parts or "\\" in subfolder:
        raise CheckpointError(f"subfolder = {subfolder!r} is invalid: it must be a relative path inside the "
                              f"adapter directory, without '..'")
    return subfolder


def resolve_adapter_files(model_id: os.PathLike, subfolder: Optional[str] = None, **hub_kwargs) -> Path:
    """The local directory holding an adapter: a path, or a Hub id fetched with huggingface_hub."""
    subfolder = safe_subfolder(subfolder)
    path = Path(model_id)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"adapter path {str(path)!r} is a file; pass the directory that holds "
                                  f"{CONFIG_NAME}")
        path = path / subfolder if subfolder else path
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"no {CONFIG_NAME} in {str(path)!r}; is this an adapter directory?")
        return path
    return download_adapter(str(model_id), subfolder=subfolder, **hub_kwargs)


def read_config_dict(directory: Path) -> dict:
    _recover_if_writable(directory)
    path = Path(directory) / CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _recover_if_writable(directory: Path) -> None:
    """Finish a save a crash interrupted (only where we may write: a Hub cache snapshot is read-only)."""
    if os.access(directory, os.W_OK) and (Path(directory) / JOURNAL).exists():
        with folder_lock(Path(directory)):  # never race a writer that is committing right now
            recover(Path(directory))


def read_tensors(directory: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    directory = Path(directory)
    _recover_if_writable(directory)
    st, bin_ = directory / SAFETENSORS_NAME, directory / BIN_NAME
    if st.is_file():
        try:
            return load_file(str(st), device=device)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{st} is truncated or corrupted: {exc}") from None
    if bin_.is_file():
        try:
            data = torch.load(str(bin_), map_location=device, weights_only=True)
        except Exception as exc:  # UnpicklingError and friends: refuse, never execute
            raise CheckpointError(f"{bin_} could not be read safely (weights_only=True): {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise CheckpointError(f"{bin_} does not hold a mapping of names to tensors")
        return data
    raise CheckpointError(f"no {SAFETENSORS_NAME} or {BIN_NAME} in {str(directory)!r}")
