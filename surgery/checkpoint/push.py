"""push_to_hub for adapters and configs: save into a temporary folder, then one commit with huggingface_hub.

The files are exactly what save_pretrained writes (PEFT's format), including surgery's model card; transformers'
mixin, which PEFT uses, replaces that card with a generic one. The endpoint, token and offline mode are
huggingface_hub's (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE).
"""
from __future__ import annotations

import tempfile
from typing import Callable, Optional

from huggingface_hub import HfApi

from .card import add_card_tags


def push_folder(save: Callable[[str], None], repo_id: str, *, default_message: str,
                commit_message: Optional[str] = None, commit_description: Optional[str] = None,
                private: Optional[bool] = None, token=None, revision: Optional[str] = None, create_pr: bool = False,
                tags: Optional[list[str]] = None):
    """Create the repo if needed (private as asked), write with `save(folder)`, upload it as one commit; returns
    huggingface_hub's CommitInfo (its `.pr_url` with create_pr=True)."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        save(folder)
        if tags:
            add_card_tags(folder, tags)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message or default_message,
                                 commit_description=commit_description, revision=revision, create_pr=create_pr)
