"""Where a prompt adapter's state goes in a model, and the Plan that records it (pure: nothing changes).

Four routes, chosen from the model's structure:

  embeddings  prompt tuning, P-tuning: virtual tokens are prepended to the input embeddings
  cache       prefix tuning wherever a transformers model takes a KV cache (decoders, encoder-decoders,
              and encoders such as BERT): the prefix is a prefilled transformers Cache, as PEFT passes it,
              so the model itself widens the masks and moves the positions on by P (exact parity). The
              cache goes to the model's forward, or, when only its backbone takes one (BERT heads in
              transformers 5), to the backbone through a forward pre-hook (see inject.py)
  attention   prefix tuning when attention modules take a cache but no module holding them all does:
              forward pre-hooks on every self-attention module put the prefix before that module's keys
              and values and widen its attention mask (see inject.py); positions stay the model's
  unplaced    prefix tuning on a model with no attention module surgery can reach (DeBERTa, custom
              modules): the adapter is built, saved and loaded as PEFT does, and forward() refuses

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

EMBEDDINGS, CACHE, ATTENTION, UNPLACED = "embeddings", "cache", "attention", "unplaced"
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
    cache_arg: Optional[str] = None       # the KV-cache keyword of the module taking the cache (cache route)
    cache_holder: str = ""                # that module's fqn; "" is the model itself
    generative: bool = False              # a decoder taking the prefix through the model's own cache argument
    attention: tuple[AttentionSite, ...] = ()
    position_limit: Optional[int] = None  # size of a learned absolute position table, if any
    position_shift: int = 0               # how far the user's tokens move right
    reason: Optional[str] = None          # why the prefix cannot run (unplaced route)


def text_config(model: nn.Module):
    cfg = getattr(model, "config", None)
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _pick(cfg, *names):
    values = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
    for name in names:
        value = _attribute(cfg, name)                   # honours attribute_map aliases
        value = values.get(name) if value is None else value
        if value is not None:
            return value
    return None


def _attribute(cfg, name: str):
    try:
        return getattr(cfg, name, None) if cfg is not None else None
    except Exception:   # noqa: BLE001 -- e.g. transformers refusing a global read of a per-layer field (Gemma 4)
        return None


def layer_kv_shapes(cfg) -> Optional[list[tuple[int, int]]]:
    """(kv heads, head_dim) of every layer for models whose attention layers differ in shape (Gemma 4: wider heads
    on the full-attention layers), as the model's config gives them; None when all layers are alike."""
    types = _pick(cfg, "layer_types")
    kv = _pick(cfg, "num_key_value_heads")
    if not types or not kv:
        return None
    heads, hidden = _pick(cfg, "num_attention_heads"), _pick(cfg, "hidden_size")
    head_dim = _pick(cfg, "head_dim") or (hidden // heads if heads and hidden else None)
    per_layer = _attribute(cfg, "per_layer_config")
    global_dim = _pick(cfg, "global_head_dim")   # older transformers' name for the full layers' head_dim
    if per_layer is not None and not isinstance(per_layer, dict):
        # transformers 5 gives most configs a per-layer view; only some layers (Gemma 4) override a field
        shapes = [(_attribute(per_layer[i], "num_key_value_heads") or kv,
                   _attribute(per_layer[i], "head_dim") or head_dim) for i in range(len(types))]
    elif global_dim is not None:
        global_kv = _pick(cfg, "num_global_key_value_heads") or kv
        shapes = [(kv, head_dim) if t == "sliding_attention" else (global_kv, global_dim) for t in types]
    else:
        return None
    return shapes if len(set(shapes)) > 1 else None


def first_shared_kv_layer(cfg, num_layers: int) -> int:
    """Layers from here on reuse an earlier layer's keys/values (no projections of their own): no prefix."""
    return (_pick(cfg, "num_hidden_layers") or num_layers) - (_pick(cfg, "num_kv_shared_layers") or 0)


def _kv_shape(cfg, token_dim: int, heads: int) -> tuple[int, int]:
    """(kv heads, head_dim) the prefix is provisioned for: the widest layer when layers differ (as PEFT)."""
    kv = _pick(cfg, "num_key_value_heads")
    shapes = layer_kv_shapes(cfg)
    if shapes:
        return max(shapes, key=lambda shape: shape[1])   # the first of the widest
    return kv, _pick(cfg, "head_dim") or token_dim // heads


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
    if out.peft_type == PeftType.PREFIX_TUNING and _pick(cfg, "num_key_value_heads"):
        # grouped-query attention: the prefix is as wide as the keys, not the queries (as PEFT); without a
        # head_dim in the config, a head is token_dim / (query) heads wide
        kv_heads, head_dim = _kv_shape(cfg, out.token_dim, out.num_attention_heads)
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


def _cache_arg(module: nn.Module) -> Optional[str]:
    params = _forward_params(module)
    return next((a for a in CACHE_ARGS if a in params), None)


def _cache_holder(model: nn.Module, found, words_path: Optional[str]) -> Optional[tuple[str, str]]:
    """(fqn, cache keyword) of the outermost module whose forward takes a KV cache and that holds every
    attention layer and the word embeddings, so that it also moves the positions past the cached prefix.
    The model itself when it takes one; None when no module does."""
    arg = _cache_arg(model)
    if arg:
        return "", arg
    inside = [s.path for s, _ in found] + ([words_path] if words_path else [])
    for fqn, module in model.named_modules():      # parents before children: the outermost comes first
        if fqn and all(p.startswith(fqn + ".") for p in inside):
            arg = _cache_arg(module)
            if arg:
                return fqn, arg
    return None


def _prefix_site(model: nn.Module, config, common: dict) -> Site:
    if any(getattr(m, "gradient_checkpointing", False) for m in model.modules()):
        raise PlanError("prefix tuning does not work with gradient checkpointing (as in PEFT); disable it first")
    found = _self_attention(model)
    if not found:
        # PEFT builds such an adapter (and saves and loads it) and only fails when it runs: so does surgery
        reason = (f"prefix tuning puts key/value states in attention layers, and {type(model).__name__} has no "
                  f"attention module surgery can reach (none with a layer_idx and a cache argument)")
        return Site(UNPLACED, reason=reason, **common)
    causal = [s for s, m in found if getattr(m, "is_causal", False)]
    holder = _cache_holder(model, found, common["word_embeddings"])
    if holder:
        path, arg = holder
        route, layers = CACHE, causal or [s for s, _ in found]
        extra = dict(cache_arg=arg, cache_holder=path, position_shift=config.num_virtual_tokens,
                     generative=not path and bool(common["encoder_decoder"] or causal))
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
    shapes = layer_kv_shapes(cfg)
    if shapes:   # layers differ: each takes the part of the prefix it fits (see forward.prefix_cache)
        ours = (config.num_attention_heads, config.token_dim // config.num_attention_heads)
        if not any(h <= ours[0] and d <= ours[1] for h, d in shapes[:first_shared_kv_layer(cfg, len(shapes))]):
            raise PlanError(f"the prefix has {ours[0]} heads x {ours[1]} dims, narrower than every layer's keys "
                            f"({sorted(set(shapes))}); leave token_dim and num_attention_heads unset")
        return
    query_heads = _pick(cfg, "num_attention_heads", "n_head", "num_heads")
    heads = _pick(cfg, "num_key_value_heads") or query_heads
    hidden = _pick(cfg, "hidden_size", "n_embd", "d_model")
    # a config without head_dim splits the hidden size over the QUERY heads; grouped-query attention only has
    # fewer key/value heads of that same size
    head_dim = _pick(cfg, "head_dim", "d_kv") or (hidden // query_heads if query_heads and hidden else None)
    if not isinstance(heads, int) or not isinstance(head_dim, int):
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


_MAX_PROMPT_VALUES = 2 ** 40   # far past any real prompt; beyond it torch cannot even size the tensor


def build_encoder(config, word_embeddings: Optional[nn.Module], initialise: bool = True) -> nn.Module:
    rows, width = saved_shape(config)
    if rows * width > _MAX_PROMPT_VALUES:
        raise PlanError(f"num_virtual_tokens = {config.num_virtual_tokens} gives a prompt of {rows} x {width} values, "
                        f"more than any model can hold; use a number of virtual tokens in the tens or hundreds")
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
        where = f"{site.cache_holder}'s" if site.cache_holder else "the model's"
        return (f"prefix keys/values ({p} slots x {config.num_layers} layers) through {where} KV cache "
                f"({site.cache_arg})")
    if site.route == UNPLACED:
        return f"prefix keys/values ({p} slots) with nowhere to go: forward() refuses ({site.reason})"
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
