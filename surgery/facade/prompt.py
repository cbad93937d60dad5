"""PEFT's prompt-learning API on PeftModel (get_prompt, get_prompt_embedding_to_save) and the hand-off to
methods/prompt, where the one prompt-learning forward and generate live (for every task class)."""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import ConfigError


class PromptLearningMixin:
    # True inside `with model.disable_adapter():` (prompt learning then runs the base model alone)
    _adapters_disabled = False

    def get_prompt(self, batch_size: int, task_ids: Optional[torch.Tensor] = None, max_cache_len=None):
        """The virtual prompts of the active adapter: (batch, tokens, dim) embeddings, or for prefix tuning
        the per-layer key/value prefix as a transformers Cache."""
        from ..methods.prompt.forward import get_prompt

        self._require_prompt_learning("get_prompt")
        return get_prompt(self, batch_size, task_ids, max_cache_len)

    def get_prompt_embedding_to_save(self, adapter_name: str) -> torch.Tensor:
        """The prompt encoder's output over all virtual tokens (saved as `prompt_embeddings`)."""
        from ..methods.prompt.forward import get_prompt_embedding_to_save

        self._require_prompt_learning("get_prompt_embedding_to_save", adapter_name)
        return get_prompt_embedding_to_save(self, adapter_name)

    def _prompt_learning(self) -> bool:
        """Whether calls go through the prompt-learning forward (a prompt adapter is active and enabled)."""
        return bool(self.peft_config) and self.active_peft_config.is_prompt_learning and not self._adapters_disabled

    def _prompt_call(self, what: str, args: tuple, kwargs: dict, adapter_names):
        from ..methods.prompt import forward

        if adapter_names is not None:
            raise ConfigError("adapter_names (one adapter per sample) is not supported with prompt learning")
        return getattr(forward, what)(self, args, kwargs)

    def _refuse_merge(self, what: str) -> None:
        if any(c.is_prompt_learning for c in self.peft_config.values()):
            raise ConfigError(f"{what}: prompt learning adds inputs, not weights; there is nothing to merge "
                              f"(use unload() to get the base model back)")

    def _remove_prompt_state(self) -> None:
        from ..methods.prompt.setup import remove_all

        remove_all(self)

    def _require_prompt_learning(self, what: str, adapter_name: Optional[str] = None) -> None:
        config = self.peft_config.get(adapter_name or self.active_adapter)
        if config is None:
            raise ConfigError(f"{what}: no adapter {adapter_name!r}; adapters: {list(self.peft_config)}")
        if not config.is_prompt_learning:
            raise ConfigError(f"{what} is only for prompt-learning adapters; this one is {config.peft_type.value}")
