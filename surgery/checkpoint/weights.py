"""load_peft_weights: an adapter's saved tensors, from a directory or the Hub, as PEFT's function gives them.

Keys are the file's (`base_model.model.<module path>.<tensor>`: no adapter name). `key_mapping` ({regex: replacement},
the first that matches wins) renames them with the `base_model.model.` prefix taken off and put back, which
is how transformers remaps checkpoints of renamed architectures.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch

from ..errors import CheckpointError
from .hub import download_weights
from .io import read_tensors, safe_subfolder
from .names import BIN_NAME, SAFETENSORS_NAME

_PREFIXES = ("base_model.model.", "base_model.")


def infer_device() -> str:
    """PEFT's default device: the accelerator torch sees, else the CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    return "cpu"


def load_peft_weights(model_id: str, device: Optional[str] = None, key_mapping: Optional[dict[str, str]] = None,
                      **hf_hub_download_kwargs) -> dict[str, torch.Tensor]:
    """The tensors of the adapter at `model_id` (a directory, or a Hub id fetched with huggingface_hub's
    `hf_hub_download`, which takes the extra keyword arguments: subfolder, revision, token, cache_dir, ...)."""
    subfolder = safe_subfolder(hf_hub_download_kwargs.get("subfolder"))
    local = Path(model_id) / subfolder if subfolder else Path(model_id)
    if (local / SAFETENSORS_NAME).is_file() or (local / BIN_NAME).is_file():
        directory = local
    else:
        found = download_weights(str(model_id), **hf_hub_download_kwargs)
        if found is None:
            raise CheckpointError(f"Can't find weights for {model_id}: no {SAFETENSORS_NAME} or {BIN_NAME} in "
                                  f"{str(local)!r}, nor on the Hub or in its cache (subfolder {subfolder!r})")
        directory = found.parent
    tensors = read_tensors(directory, device=device or infer_device())
    return _remapped(tensors, key_mapping) if key_mapping else tensors


def _remapped(tensors: dict, key_mapping: dict[str, str]) -> dict:
    out = {}
    for key, value in tensors.items():
        prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
        if prefix is None:
            raise CheckpointError(f"key_mapping needs PEFT's 'base_model.model.' prefix on every key; {key!r} has "
                                  f"none (is this a PEFT adapter file?)")
        bare = key[len(prefix):]
        for pattern, replacement in key_mapping.items():
            renamed, count = re.subn(pattern, replacement, bare)
            if count:
                bare = renamed
                break
        out[prefix + bare] = value
    return out
