"""Fetch an adapter from the Hugging Face Hub (or its local cache, offline) with huggingface_hub."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import huggingface_hub.constants as hub_constants
from huggingface_hub import file_exists, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HFValidationError

from ..errors import CheckpointError, PeftWarning
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
    if download_weights(repo_id, **kwargs_without_repo(kwargs)) is None:
        raise CheckpointError(f"{repo_id!r} has no {SAFETENSORS_NAME} or {BIN_NAME}")
    return config_path.parent


def kwargs_without_repo(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k != "repo_id"}


def download_weights(repo_id: str, subfolder: Optional[str] = None, revision: Optional[str] = None,
                     token=None, cache_dir=None, **_ignored) -> Optional[Path]:
    """The local path of an adapter's weights file on the Hub (safetensors first, then .bin), or None."""
    for weights in (SAFETENSORS_NAME, BIN_NAME):
        try:
            return Path(hf_hub_download(repo_id=repo_id, filename=weights, subfolder=subfolder, revision=revision,
                                        token=token, cache_dir=cache_dir))
        except HFValidationError:
            raise CheckpointError(f"{repo_id!r} is neither an existing directory nor a valid Hub repo id") from None
        except Exception:   # not there (or not cached, offline): try the other format
            continue
    return None


def hub_file_exists(repo_id: str, filename: str, revision: Optional[str] = None, token=None,
                    cache_dir=None, repo_type: Optional[str] = None) -> bool:
    """Whether the Hub repo has `filename`; offline, whether the local cache has it (PEFT does not look there,
    so a tokenizer cached with an offline adapter would be missed)."""
    try:
        if hub_constants.HF_HUB_OFFLINE:
            found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision,
                                           repo_type=repo_type)
            return isinstance(found, str)
        return bool(file_exists(repo_id, filename, revision=revision, repo_type=repo_type, token=token))
    except (HFValidationError, EntryNotFoundError):
        return False
    except Exception as exc:   # as PEFT: an unreachable Hub means "not found", said once
        warnings.warn(f"could not check {filename} in {repo_id!r} on the Hub ({exc}); going on without it",
                      PeftWarning, stacklevel=3)
        return False
