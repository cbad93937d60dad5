"""Where a prompt adapter's state goes in a model, and the Plan that records it (pure: nothing changes).

Three routes, chosen from the model's structure:

  embeddings  prompt tuning, P-tuning: virtual tokens are prepended to the input embeddings
  cache       prefix tuning on causal decoders and encoder-decoders whose forward takes a KV cache:
              the prefix is a prefilled transformers Cache, as PEFT passes it (exact parity, generate)
  attention   prefix tuning on bidirectional encoders (BERT, RoBERTa, ...), which take no cache in
              transformers 5: forward pre-hooks on every self-attention module put the prefix before
              that module's keys and values and widen its attention mask (see inject.py)

Architecture fields the config leaves unset are filled from the model's config, with PEFT's rules.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ...config.enums import PeftType, TaskType
from ...errors import ConfigError, PlanError
from ...plan.model import Injection, Plan
from .embedding import PromptEmbedding
from .encoder import PromptEncoder
from .prefix import PrefixEncoder

EMBEDDINGS, CACHE, ATTENTION = "embeddings", "cache", "attention"
CACHE_ARGS = ("cache", "past_key_values")      # transformers 5 name first, then the older one
MASK_ARGS = ("attention_mask", "mask")


@dataclass(frozen=True)
class AttentionSite:
    path: str
    cache_arg: str
    mask_arg: str
    positional: tuple[str, ...]   # forward's positional parameter names (to read positional args by name)


@dataclass(frozen=True)
class Site:
    """Facts about where one prompt adapter's state goes (derived from the model; never saved)."""

    route: str
    word_embeddings: Optional[str]        # fqn of the input embeddings
    backbone: Optional[str]               # first child that is a transformers model (PEFT's attribute)
    encoder_decoder: bool
    cache_arg: Optional[str] = None       # the model's KV-cache keyword (cache route)
    attention: tuple[AttentionSite, ...] = ()
    position_limit: Optional[int] = None  # size of a learned absolute position table, if any
    position_shift: int = 0               # how far the user's tokens move right


def text_config(model: nn.Module):
    cfg = getattr(model, "config", None)
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _pick(cfg, *names):
    values = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
    for name in names:
        value = getattr(cfg, name, None) if cfg is not None else None  # honours attribute_map aliases
        value = values.get(name) if value is None else value
        if value is not None:
            return value
    return None


def resolve(model: nn.Module, config):
    """`config` (the planner's own copy) with unset architecture fields taken from the model's config, in place
    (PEFT's rules)."""
    out = config
    if out.num_virtual_tokens is None:
        raise ConfigError(f"{type(out).__name__}.num_virtual_tokens is required (how many virtual tokens to learn)")
    cfg = text_config(model)
    for key, names in (("num_layers", ("num_hidden_layers", "num_layers", "n_layer")),
                       ("token_dim", ("hidden_size", "n_embd", "d_model")),
                       ("num_attention_heads", ("num_attention_heads", "n_head", "num_heads",
                                                "encoder_attention_heads"))):
        if getattr(out, key) is None:
            value = _pick(cfg, *names)
            if value is None:
                raise ConfigError(f"{type(out).__name__}.{key} is unset and the model's config has none of "
                                  f"{', '.join(names)}; set {key}")
            setattr(out, key, value)
    kv_heads = _pick(cfg, "num_key_value_heads")
    if out.peft_type == PeftType.PREFIX_TUNING and kv_heads:
        # grouped-query attention: the prefix is as wide as the keys, not the queries (as PEFT)
        head_dim = _pick(cfg, "head_dim") or out.token_dim // out.num_attention_heads
        out.token_dim, out.num_attention_heads = head_dim * kv_heads, kv_heads
    if hasattr(out, "encoder_hidden_size") and out.encoder_hidden_size is None:
        out.encoder_hidden_size = out.token_dim
    if out.num_transformer_submodules is None:
        out.num_transformer_submodules = 2 if out.task_type == TaskType.SEQ_2_SEQ_LM else 1
    out.validate()
    return out


def _forward_params(module: nn.Module) -> dict:
    try:
        return dict(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return {}


def _self_attention(model: nn.Module) -> list[tuple[AttentionSite, nn.Module]]:
    """Attention modules that take a KV cache (transformers marks each with its layer_idx), not cross-attention."""
    found = []
    for fqn, module in model.named_modules():
        index = getattr(module, "layer_idx", None)
        if not isinstance(index, int) or isinstance(index, bool):
            continue
        if getattr(module, "is_cross_attention", False) or "Cross" in type(module).__name__ or "EncDec" in fqn:
            continue
        params = _forward_params(module)
        cache_arg = next((a for a in CACHE_ARGS if a in params), None)
        mask_arg = next((a for a in MASK_ARGS if a in params), None)
        if cache_arg and mask_arg:
            positional = tuple(n for n, p in params.items()
                               if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
            found.append((AttentionSite(fqn, cache_arg, mask_arg, positional), module))
    return found


def _word_embeddings(model: nn.Module) -> tuple[Optional[str], Optional[nn.Module]]:
    module = None
    try:
        module = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        pass
    if module is None or getattr(module, "weight", None) is None:
        vocab = _pick(text_config(model), "vocab_size")
        module = next((m for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == vocab), None)
    if module is None:
        return None, None
    return next((n for n, m in model.named_modules() if m is module), None), module


def _backbone(model: nn.Module) -> Optional[str]:
    from transformers import PreTrainedModel

    return next((n for n, m in model.named_children() if isinstance(m, PreTrainedModel)), None)


def _position_limit(model: nn.Module, words: Optional[nn.Module]) -> Optional[int]:
    """The size of a learned absolute position table (GPT-2, BERT); None for relative / rotary positions."""
    limit = _pick(text_config(model), "max_position_embeddings", "n_positions")
    if not isinstance(limit, int):
        return None
    table = any(isinstance(m, nn.Embedding) and m is not words and m.num_embeddings == limit for m in model.modules())
    return limit if table else None


def locate(model: nn.Module, config) -> Site:
    """Where the state of `config` (resolved) goes in `model`; PlanError when it cannot go anywhere."""
    cfg = text_config(model)
    enc_dec = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    words_path, words = _word_embeddings(model)
    limit = _position_limit(model, words)
    common = dict(word_embeddings=words_path, backbone=_backbone(model), encoder_decoder=enc_dec,
                  position_limit=limit)
    if config.peft_type != PeftType.PREFIX_TUNING:
        if words is None:
            raise PlanError(f"{config.peft_type.value} prepends virtual tokens to the input embeddings, and this "
                            f"{type(model).__name__} has none (no get_input_embeddings())")
        if words.weight.shape[-1] != config.token_dim:
            raise PlanError(f"token_dim = {config.token_dim} but the model's input embeddings "
                            f"({words_path}) are {words.weight.shape[-1]} wide; leave token_dim unset")
        site = Site(EMBEDDINGS, position_shift=config.num_virtual_tokens, **common)
    else:
        site = _prefix_site(model, config, common)
    _check_positions(site, config)
    _check_kv_width(cfg, config)
    return site


def _prefix_site(model: nn.Module, config, common: dict) -> Site:
    found = _self_attention(model)
    if not found:
        raise PlanError(f"prefix tuning puts key/value states in attention layers, and {type(model).__name__} "
                        f"has no attention module surgery can reach (none with a layer_idx and a cache argument)")
    if any(getattr(m, "gradient_checkpointing", False) for m in model.modules()):
        raise PlanError("prefix tuning does not work with gradient checkpointing (as in PEFT); disable it first")
    causal = [s for s, m in found if getattr(m, "is_causal", False)]
    top_arg = next((a for a in CACHE_ARGS if a in _forward_params(model)), None)
    if top_arg and (common["encoder_decoder"] or causal):
        route, layers, extra = CACHE, causal or [s for s, _ in found], dict(cache_arg=top_arg)
        extra["position_shift"] = config.num_virtual_tokens
    else:
        layers = [s for s, m in found if not getattr(m, "is_causal", False)]
        route, extra = ATTENTION, dict(attention=tuple(layers))
    if config.num_layers != len(layers):
        raise PlanError(f"num_layers = {config.num_layers} but the model has {len(layers)} self-attention layers "
                        f"taking the prefix; leave num_layers unset to take it from the model")
    return Site(route, **common, **extra)


def _check_positions(site: Site, config) -> None:
    if site.position_limit and site.position_shift >= site.position_limit:
        raise PlanError(f"num_virtual_tokens = {config.num_virtual_tokens} overflows max_position_embeddings = "
                        f"{site.position_limit}: the virtual tokens take positions 0..{site.position_shift - 1}, "
                        f"leaving no position for the input; use fewer virtual tokens")


def _check_kv_width(cfg, config) -> None:
    if config.peft_type != PeftType.PREFIX_TUNING or cfg is None:
        return
    heads = _pick(cfg, "num_key_value_heads") or _pick(cfg, "num_attention_heads", "n_head", "num_heads")
    hidden = _pick(cfg, "hidden_size", "n_embd", "d_model")
    head_dim = _pick(cfg, "head_dim", "d_kv") or (hidden // heads if heads and hidden else None)
    if not heads or not head_dim:
        return
    ours = (config.num_attention_heads, config.token_dim // config.num_attention_heads)
    if ours != (heads, head_dim):
        raise PlanError(f"the prefix has {ours[0]} heads x {ours[1]} dims (token_dim = {config.token_dim}, "
                        f"num_attention_heads = {config.num_attention_heads}) but the model's keys have {heads} "
                        f"heads x {head_dim} dims; leave token_dim and num_attention_heads unset")


ENCODERS = {
    PeftType.PROMPT_TUNING: lambda config, words, initialise: PromptEmbedding(config, words, initialise=initialise),
    PeftType.P_TUNING: lambda config, words, initialise: PromptEncoder(config),
    PeftType.PREFIX_TUNING: lambda config, words, initialise: PrefixEncoder(config),
}


def build_encoder(config, word_embeddings: Optional[nn.Module], initialise: bool = True) -> nn.Module:
    return ENCODERS[config.peft_type](config, word_embeddings, initialise)


def saved_shape(config) -> tuple[int, int]:
    """The shape of the checkpoint's `prompt_embeddings` tensor."""
    if config.peft_type == PeftType.PREFIX_TUNING:
        return config.num_virtual_tokens, config.num_layers * 2 * config.token_dim
    return config.total_virtual_tokens, config.token_dim


def describe(site: Site, config) -> str:
    p = config.num_virtual_tokens
    if site.route == EMBEDDINGS:
        where = "the encoder's " if site.encoder_decoder else ""
        return f"{p} virtual tokens prepended to {where}input embeddings ({site.word_embeddings})"
    if site.route == CACHE:
        return (f"prefix keys/values ({p} slots x {config.num_layers} layers) through the model's KV cache "
                f"({site.cache_arg})")
    first = site.attention[0].path
    return (f"prefix keys/values ({p} slots) injected at {len(site.attention)} self-attention modules "
            f"({first}, ...) by forward pre-hooks")


def plan_prompt(model: nn.Module, config, adapter_name: str, saved: list, base_params: int) -> tuple[Plan, object]:
    """The Plan of a prompt adapter (no module rewrites, the prompt encoder as an injection, the heads to save)
    and the config it applies, with the architecture fields resolved."""
    resolved = resolve(model, config)
    site = locate(model, resolved)
    with torch.device("meta"):
        params = sum(p.numel() for p in build_encoder(resolved, None, initialise=False).parameters())
    injection = Injection(f"prompt_encoder.{adapter_name}", f"{resolved.peft_type.value} ({site.route})",
                          saved_shape(resolved), params)
    return Plan(adapter_name=adapter_name, peft_type=resolved.peft_type.value,
                task_type=resolved.task_type.value if resolved.task_type else None, rewrites=[],
                modules_to_save=saved, base_params=base_params, config=resolved.to_dict(),
                rules=describe(site, resolved), injections=[injection]), resolved
