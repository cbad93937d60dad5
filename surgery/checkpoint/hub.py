"""Fetch an adapter from the Hugging Face Hub (or its local cache, offline) with huggingface_hub."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError

from ..errors import CheckpointError
from .names import BIN_NAME, CONFIG_NAME, SAFETENSORS_NAME


def download_adapter(repo_id: str, subfolder: Optional[str] = None, revision: Optional[str] = None,
                     token=None, cache_dir=None, **_ignored) -> Path:
    kwargs = dict(repo_id=repo_id, subfolder=subfolder, revision=revision, token=token, cache_dir=cache_dir)
    try:
        config_path = Path(hf_hub_download(filename=CONFIG_NAME, **kwargs))
    except HFValidationError:
        raise CheckpointError(f"{repo_id!r} is neither an existing directory nor a valid Hub repo id") from None
    except Exception as exc:
        raise CheckpointError(f"could not fetch {CONFIG_NAME} of {repo_id!r} (revision {revision!r}, subfolder "
                              f"{subfolder!r}) from the Hub or its cache: {exc}") from None
    for weights in (SAFETENSORS_NAME, BIN_NAME):
        try:
            hf_hub_download(filename=weights, **kwargs)
            break
        except EntryNotFoundError:
            continue
        except Exception:
            continue
    else:
        raise CheckpointError(f"{repo_id!r} has no {SAFETENSORS_NAME} or {BIN_NAME}")
    return config_path.parent
