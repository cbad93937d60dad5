"""Add and remove prompt adapters on a PeftModel: plan, build the encoder, then change the model.

The PeftModel gets PEFT's attributes: `prompt_encoder` (ModuleDict: adapter -> encoder), `prompt_tokens`
(adapter -> arange of virtual-token ids), `word_embeddings` and `transformer_backbone_name`. The base model
itself is only changed by the modules_to_save copies (e.g. the classifier) and, on the attention route,
by forward pre-hooks on its attention modules.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ...plan.planner import plan as make_plan
from ...rewrite.apply import apply_plan
from .inject import install
from .plan import ATTENTION, build_encoder, locate


def check_mix(existing_configs, config) -> None:
    """A PeftModel holds prompt adapters of one method only, never mixed with module adapters (as PEFT)."""
    for other in existing_configs:
        if (other.is_prompt_learning or config.is_prompt_learning) and other.peft_type != config.peft_type:
            raise ConfigError(f"cannot combine a {config.peft_type.value} adapter with the model's "
                              f"{other.peft_type.value} adapter(s) in one PeftModel; use a separate PeftModel")


def add_prompt_adapter(peft_model, adapter_name: str, config, active: list[str]):
    """Plan, build and attach one prompt adapter; returns (plan, resolved config). On error nothing changed."""
    model = peft_model.get_base_model()
    p = make_plan(model, config, adapter_name)
    resolved = type(config).from_dict(p.config)
    if hasattr(config, "postprocess_past_key_value_function"):   # a callable: kept out of the saved dict
        resolved.postprocess_past_key_value_function = config.postprocess_past_key_value_function
    site = locate(model, resolved)
    words = model.get_submodule(site.word_embeddings) if site.word_embeddings else None
    encoder = build_encoder(resolved, words)          # may load a tokenizer: before any change
    device = words.weight.device if words is not None else next(model.parameters()).device
    encoder = encoder.to(device).requires_grad_(not resolved.inference_mode)
    apply_plan(model, p, resolved, active=active)      # modules_to_save copies; freezes the base model
    if "prompt_encoder" not in peft_model._modules:
        peft_model.prompt_encoder = nn.ModuleDict()
        peft_model.prompt_tokens, peft_model._prompt_sites, peft_model._prefix_slots = {}, {}, {}
    peft_model.prompt_encoder[adapter_name] = encoder
    peft_model.prompt_tokens[adapter_name] = torch.arange(resolved.total_virtual_tokens).long()
    peft_model._prompt_sites[adapter_name] = site
    if words is not None:
        peft_model.word_embeddings = words
    peft_model.transformer_backbone_name = site.backbone
    if site.route == ATTENTION:
        peft_model._prefix_slots[adapter_name] = install(model, site.attention)
    return p, resolved


def remove_prompt_adapter(peft_model, adapter_name: str) -> None:
    """Drop an adapter's encoder, tokens and hooks (its modules_to_save copies are the caller's)."""
    if "prompt_encoder" not in peft_model._modules or adapter_name not in peft_model.prompt_encoder:
        return
    del peft_model.prompt_encoder[adapter_name]
    peft_model.prompt_tokens.pop(adapter_name, None)
    peft_model._prompt_sites.pop(adapter_name, None)
    slot = peft_model._prefix_slots.pop(adapter_name, None)
    if slot is not None:
        slot.remove()


def remove_all(peft_model) -> None:
    if "prompt_encoder" in peft_model._modules:
        for name in list(peft_model.prompt_encoder.keys()):
            remove_prompt_adapter(peft_model, name)
