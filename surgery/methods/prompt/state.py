"""PromptState: every prompt adapter of one PeftModel, in one object (see facade/injected.py for the flow).

It is the ModuleDict PEFT calls `prompt_encoder` (adapter -> PromptEmbedding / PromptEncoder / PrefixEncoder),
and it keeps, per adapter, the virtual-token ids (`prompt_tokens`, PEFT's attribute), where the prompt goes
(the Site from plan.py) and the hooks that inject a prefix where the model's forward takes none. The PeftModel exposes
PEFT's names: `prompt_tokens`, `word_embeddings`, `transformer_backbone_name`, `get_prompt`,
`get_prompt_embedding_to_save`.

Checkpoint format, PEFT's:

  prompt_embeddings                  the encoder's output over all virtual tokens (training), or the stored
                                     embedding when the adapter is frozen (inference_mode); loaded into the
                                     encoder's `embedding` (an inference-mode encoder returns it as is)
  base_model.<path>.<param>          modules_to_save copies (e.g. base_model.classifier.weight): PEFT's base
                                     model is the transformer itself here, so no `.model.` segment
"""
from __future__ import annotations

import logging
from typing import NamedTuple, Optional

import torch
from torch import nn

from ...errors import ConfigError
from ...facade.injected import InjectedState
from ...rewrite.modules_to_save import ModulesToSaveWrapper
from ...rewrite.trainable import adapter_layers
from .forward import forward, generate, get_prompt, get_prompt_embedding_to_save
from .inject import install, install_backbone
from .plan import ATTENTION, CACHE, UNPLACED, Site, build_encoder, locate

logger = logging.getLogger(__name__)

PROMPT_KEY = "prompt_embeddings"


class Staged(NamedTuple):
    site: Site
    words: Optional[nn.Module]
    encoder: nn.Module
    tokens: torch.Tensor


class PromptState(InjectedState):
    attribute = "prompt_encoder"
    exposed = ("prompt_tokens", "word_embeddings", "transformer_backbone_name", "get_prompt",
               "get_prompt_embedding_to_save")

    def __init__(self) -> None:
        super().__init__()
        # plain facts, kept out of nn.Module's registries (word_embeddings belongs to the base model)
        self.__dict__.update(prompt_tokens={}, sites={}, slots={}, word_embeddings=None,
                             transformer_backbone_name=None)

    # -- the flow --------------------------------------------------------------------------------------
    def stage(self, model: nn.Module, plan, config) -> Staged:
        site = locate(model, config)
        words = model.get_submodule(site.word_embeddings) if site.word_embeddings else None
        encoder = build_encoder(config, words)          # may load a tokenizer: before any change
        device = words.weight.device if words is not None else next(model.parameters()).device
        encoder = encoder.to(device).requires_grad_(not config.inference_mode)
        return Staged(site, words, encoder, torch.arange(config.total_virtual_tokens).long())

    def attach(self, adapter_name: str, staged: Staged) -> None:
        self[adapter_name] = staged.encoder
        self.prompt_tokens[adapter_name] = staged.tokens
        self.sites[adapter_name] = staged.site
        if staged.words is not None:
            self.__dict__["word_embeddings"] = staged.words
        self.__dict__["transformer_backbone_name"] = staged.site.backbone
        base = self.host.get_base_model()
        if staged.site.route == ATTENTION:
            self.slots[adapter_name] = install(base, staged.site.attention)
        elif staged.site.route == CACHE and staged.site.cache_holder:
            self.slots[adapter_name] = install_backbone(base, staged.site)
        elif staged.site.route == UNPLACED:
            logger.warning("adapter %r: %s; it can be saved and loaded, but forward() will refuse (PEFT fails "
                           "there too)", adapter_name, staged.site.reason)

    def detach(self, adapter_name: str) -> None:
        """Drop an adapter's encoder, tokens and hooks (its modules_to_save copies are the caller's)."""
        if adapter_name in self:
            del self[adapter_name]
        self.prompt_tokens.pop(adapter_name, None)
        self.sites.pop(adapter_name, None)
        slot = self.slots.pop(adapter_name, None)
        if slot is not None:
            slot.remove()

    # -- calls -----------------------------------------------------------------------------------------
    def forward_call(self, args: tuple, kwargs: dict):
        return forward(self, args, kwargs)

    def generate_call(self, args: tuple, kwargs: dict):
        return generate(self, args, kwargs)

    def get_prompt(self, batch_size: int, task_ids: Optional[torch.Tensor] = None, max_cache_len=None):
        """The virtual prompts of the active adapter: (batch, tokens, dim) embeddings, or for prefix tuning
        the per-layer key/value prefix as a transformers Cache."""
        return get_prompt(self, batch_size, task_ids, max_cache_len)

    def get_prompt_embedding_to_save(self, adapter_name: str) -> torch.Tensor:
        """The prompt encoder's output over all virtual tokens (saved as `prompt_embeddings`)."""
        if adapter_name not in self:
            raise ConfigError(f"get_prompt_embedding_to_save: no prompt adapter {adapter_name!r}; adapters: "
                              f"{list(self.keys())}")
        return get_prompt_embedding_to_save(self, adapter_name)

    # -- checkpoint ------------------------------------------------------------------------------------
    def checkpoint_entries(self, adapter_name: str) -> dict:
        config = self.host.peft_config[adapter_name]
        weight = self[adapter_name].embedding.weight
        saved = weight if config.inference_mode else self.get_prompt_embedding_to_save(adapter_name)
        out = {PROMPT_KEY: (saved, weight)}
        for fqn, layer in adapter_layers(self.host.get_base_model()):
            if isinstance(layer, ModulesToSaveWrapper) and adapter_name in layer.modules_to_save:
                for key, tensor in layer.modules_to_save[adapter_name].state_dict().items():
                    out[f"base_model.{fqn}.{key}"] = (tensor, tensor)
        return out
