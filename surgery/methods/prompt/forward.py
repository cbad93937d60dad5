"""THE prompt-learning forward and generate, shared by every task class (PEFT keeps three near-copies).

What differs between tasks is data (the task table, surgery/tasks.py), not code:

  route       forward                                               generate
  embeddings  inputs_embeds = [prompts; embed(input_ids)],          decoders: the first step of each
              mask += P ones, labels += P x -100 (token losses),    generation gets the prompts (patched
              QA spans += P, token_type_ids padded or dropped       prepare_inputs_for_generation);
              (encoder-decoders: on the encoder side)               encoder-decoders: prompts go to the encoder
  cache       the model's (or its backbone's, by a hook) KV cache   decoders and encoder-decoders: the first
              = prefilled prefix, mask (decoder side) += P ones,    step of each generation gets a fresh
              position_ids += P, token_type_ids kept or dropped     prefix cache (encoders: not generative)
  attention   the attention-module hooks are armed for the call     (not generative)
  unplaced    refused: the model has nowhere to take a prefix       refused

The KV cache may be on or off in generate(): with it off, every step is a fresh forward and gets the
prompt again, so both give the tokens a step-by-step forward gives.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import warnings

import torch

from ...config.enums import PeftType
from ...errors import ConfigError, PlanError, SurgeryError
from ...tasks import NO_TASK, Task, task_for
from .plan import CACHE, CACHE_ARGS, EMBEDDINGS, UNPLACED, first_shared_kv_layer, layer_kv_shapes, text_config
from .prefix import layer_states

logger = logging.getLogger(__name__)


DEFAULT_RULE = NO_TASK   # how the encoder side of an encoder-decoder takes the prompts in generate()


# -- the prompt states ---------------------------------------------------------------------------------
def _encoder_output(state, name: str, count: int) -> torch.Tensor:
    """(count, width): the encoder's output for virtual tokens 0..count-1 (the stored values when frozen)."""
    config, encoder = state.host.peft_config[name], state[name]
    if config.inference_mode:
        return encoder.embedding.weight[:count]
    tokens = state.prompt_tokens[name][:count].to(encoder.embedding.weight.device)
    return encoder(tokens.unsqueeze(0))[0]


def prompt_embeddings(state, name: str, batch_size: int) -> torch.Tensor:
    """(batch, total_virtual_tokens, token_dim) virtual-token embeddings (prompt tuning, P-tuning)."""
    config = state.host.peft_config[name]
    return _encoder_output(state, name, config.total_virtual_tokens).unsqueeze(0).expand(batch_size, -1, -1)


def prefix_layers(state, name: str, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (key, value), each (batch, heads, num_virtual_tokens, head_dim) (prefix tuning)."""
    config = state.host.peft_config[name]
    flat = _encoder_output(state, name, config.num_virtual_tokens).unsqueeze(0)
    dtype = getattr(state.host.get_base_model(), "dtype", None)
    return layer_states(flat.to(dtype) if dtype is not None else flat, config, batch_size)


def prefix_cache(state, name: str, batch_size: int):
    """The prefix as a transformers Cache (an EncoderDecoderCache with an empty cross-attention part for
    encoder-decoders, whose cross-attention must see the new encoder output)."""
    from transformers import DynamicCache, EncoderDecoderCache

    layers = prefix_layers(state, name, batch_size)
    cfg = text_config(state.host.get_base_model())
    shapes = layer_kv_shapes(cfg)
    cache = DynamicCache(layers) if not shapes else _per_layer_cache(layers, shapes, cfg, state.host.peft_config[name])
    if state.sites[name].encoder_decoder:
        return EncoderDecoderCache(cache, DynamicCache())
    return cache


def _per_layer_cache(layers, shapes, cfg, config):
    """Layers of different shapes (Gemma 4): the prefix is provisioned for the widest; each layer takes its first
    heads x head_dim, as PEFT does. Layers wider than the prefix, and layers reusing another layer's keys, get
    none (a warning names them); a prefix that fits no layer is an error."""
    from transformers import DynamicCache

    cache = DynamicCache(config=cfg)
    shared = first_shared_kv_layer(cfg, len(layers))
    positions = torch.arange(config.num_virtual_tokens, device=layers[0][0].device)
    injected, skipped = [], []
    for index, ((key, value), (heads, dim)) in enumerate(zip(layers, shapes)):
        if index >= shared or heads > key.shape[1] or dim > key.shape[-1]:
            skipped.append(index)
            continue
        cache.update(key[:, :heads, :, :dim], value[:, :heads, :, :dim], index,
                     cache_kwargs={"cache_position": positions})
        injected.append(index)
    if not injected:
        raise SurgeryError(f"prefix tuning skipped every layer: the prefix ({config.num_attention_heads} heads x "
                           f"{config.token_dim // config.num_attention_heads} dims) is narrower than every layer's "
                           f"keys ({sorted(set(shapes))}); set token_dim and num_attention_heads to fit a layer")
    if skipped:
        warnings.warn(f"prefix tuning: the prefix went into layers {injected}; skipped {skipped} due to KV shape "
                      f"mismatch or shared-KV layers")
    return cache


def get_prompt(state, batch_size: int, task_ids=None, max_cache_len=None):
    """PEFT's get_prompt: the prompts (batch, tokens, dim), or for prefix tuning the prefix as a Cache."""
    name = state.host.active_adapter
    _no_task_ids(task_ids)
    if state.host.peft_config[name].peft_type == PeftType.PREFIX_TUNING:
        return prefix_cache(state, name, batch_size)
    return prompt_embeddings(state, name, batch_size)


def get_prompt_embedding_to_save(state, adapter_name: str) -> torch.Tensor:
    """The encoder's output over all virtual tokens (what PEFT saves as `prompt_embeddings`)."""
    config = state.host.peft_config[adapter_name]
    count = config.num_virtual_tokens if config.peft_type == PeftType.PREFIX_TUNING else config.total_virtual_tokens
    with torch.no_grad():
        tokens = state.prompt_tokens[adapter_name][:count]
        encoder = state[adapter_name]
        return encoder(tokens.to(encoder.embedding.weight.device).unsqueeze(0))[0].detach().cpu()


# -- forward -------------------------------------------------------------------------------------------
def forward(state, args: tuple, kwargs: dict):
    model = state.host.get_base_model()
    name = state.host.active_adapter
    config, site = state.host.peft_config[name], state.sites[name]
    kwargs = _bind(model, args, kwargs)
    _no_task_ids(kwargs.pop("task_ids", None))
    _unplaced(site, model)
    batch, length = _batch_and_length(kwargs)
    _check_positions(site, length)
    rule = task_for(config.task_type)
    if site.route == EMBEDDINGS:
        return model(**_prepend(state, name, kwargs, rule))
    if rule.token_type_ids == "drop" and kwargs.get("token_type_ids") is not None:
        logger.warning("token_type_ids are not supported with prompt learning for this task (as PEFT): ignoring them")
        kwargs["token_type_ids"] = None
    if site.route == CACHE:
        if kwargs.get(site.cache_arg) is not None:
            raise ConfigError(f"prefix tuning supplies the model's KV cache ({site.cache_arg}); do not pass one. "
                              f"To continue a sequence, use generate()")
        p = config.num_virtual_tokens
        mask_key = "decoder_attention_mask" if site.encoder_decoder else "attention_mask"
        kwargs[mask_key] = _ones_before(kwargs.get(mask_key), p)
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"] + p   # the user's tokens sit after the prefix
        cache = prefix_cache(state, name, batch)
        if not site.cache_holder:
            kwargs[site.cache_arg] = cache
            return model(**kwargs)
        with state.slots[name].armed(cache):                     # the backbone's hook hands it over
            return model(**kwargs)
    with state.slots[name].armed(prefix_layers(state, name, batch)):
        return model(**kwargs)


def _prepend(state, name: str, kwargs: dict, rule: Task) -> dict:
    """The inputs with the virtual tokens in front (on the encoder side of an encoder-decoder)."""
    config, site = state.host.peft_config[name], state.sites[name]
    ids, embeds = kwargs.pop("input_ids", None), kwargs.pop("inputs_embeds", None)
    embeds = state.word_embeddings(ids) if embeds is None else embeds
    prompts = prompt_embeddings(state, name, embeds.shape[0]).to(embeds.dtype)
    if site.encoder_decoder:
        prompts = prompts[:, : config.num_virtual_tokens]   # PEFT: the encoder gets the first P tokens
    count = prompts.shape[1]
    kwargs["inputs_embeds"] = torch.cat([prompts, embeds], dim=1)
    kwargs["attention_mask"] = _ones_before(kwargs.get("attention_mask"), count)
    if kwargs.get("position_ids") is not None:
        logger.warning("position_ids are not supported with prompt learning (as PEFT): ignoring them")
        kwargs["position_ids"] = None
    if kwargs.get("token_type_ids") is not None:
        if rule.token_type_ids == "pad":
            kwargs["token_type_ids"] = _before(kwargs["token_type_ids"], count, 0)
        else:
            logger.warning("token_type_ids are not supported with prompt learning for this task (as PEFT): "
                           "ignoring them")
            kwargs["token_type_ids"] = None
    if rule.pad_labels and kwargs.get("labels") is not None:
        kwargs["labels"] = _before(kwargs["labels"], count, -100)
    for key in rule.shift:
        if kwargs.get(key) is not None:
            kwargs[key] = kwargs[key] + count
    return kwargs


# -- generate ------------------------------------------------------------------------------------------
def generate(state, args: tuple, kwargs: dict):
    model = state.host.get_base_model()
    name = state.host.active_adapter
    site = state.sites[name]
    if args:
        kwargs = {"input_ids": args[0], **kwargs} if len(args) == 1 else _bind(model, args, kwargs)
    _no_task_ids(kwargs.pop("task_ids", None))
    _unplaced(site, model)
    if site.route != EMBEDDINGS and not site.generative:
        raise ConfigError(f"generate() with prefix tuning needs a decoder or encoder-decoder that takes a KV cache "
                          f"in its own forward; this {type(model).__name__} does not")
    if site.route == EMBEDDINGS and site.encoder_decoder:
        # the encoder runs once, inside generate: it gets the prompts up front
        if kwargs.pop("encoder_outputs", None) is not None:
            logger.warning("encoder_outputs is ignored by generate() with prompt learning (the prompts change them)")
        kwargs = _prepend(state, name, dict(kwargs), DEFAULT_RULE)
        return model.generate(**kwargs)
    with _patched_prepare(model, functools.partial(_step, state, name)):
        return model.generate(**kwargs)


def _step(state, name: str, original, *args, **kwargs) -> dict:
    """prepare_inputs_for_generation + the prompt: fresh steps (no cache yet, or cache off) get the prompt;
    every step gets the attention mask widened and positions as forward() gives them."""
    inputs = original(*args, **kwargs)
    config, site = state.host.peft_config[name], state.sites[name]
    p = config.num_virtual_tokens
    cache_key = next((k for k in CACHE_ARGS if k in inputs), site.cache_arg or CACHE_ARGS[0])
    cache = inputs.get(cache_key)
    use_cache = kwargs.get("use_cache", inputs.get("use_cache", True)) is not False
    fresh = not use_cache or cache is None or cache.get_seq_length() == 0
    mask_key = "decoder_attention_mask" if site.encoder_decoder else "attention_mask"
    if inputs.get(mask_key) is not None:
        if not isinstance(inputs[mask_key], torch.Tensor) or inputs[mask_key].dim() != 2:
            raise ConfigError("generate() with prompt learning needs 2D attention masks (a dynamic KV cache, the "
                              "default); static / compiled caches are not supported")
        inputs[mask_key] = _ones_before(inputs[mask_key], p)
    ids = inputs.get("decoder_input_ids" if site.encoder_decoder else "input_ids")
    embeds = inputs.get("inputs_embeds")
    batch = (ids if ids is not None else embeds).shape[0]
    if site.route == CACHE:
        if inputs.get("position_ids") is not None:
            inputs["position_ids"] = inputs["position_ids"] + p
        if fresh:
            inputs[cache_key] = prefix_cache(state, name, batch)
        return inputs
    inputs.pop("position_ids", None)   # as PEFT: positions follow the cache, the prompt included
    if fresh:
        if not use_cache:
            inputs.pop(cache_key, None)
        embeds = state.word_embeddings(ids) if embeds is None else embeds
        _check_positions(site, embeds.shape[1])
        prompts = prompt_embeddings(state, name, batch).to(embeds.dtype)
        inputs["inputs_embeds"], inputs["input_ids"] = torch.cat([prompts, embeds], dim=1), None
    return inputs


@contextlib.contextmanager
def _patched_prepare(model, step):
    """Route the model's prepare_inputs_for_generation through `step` for one generate() call."""
    had = "prepare_inputs_for_generation" in model.__dict__
    original = model.prepare_inputs_for_generation
    wrapped = functools.wraps(original)(functools.partial(step, original))
    model.__dict__["prepare_inputs_for_generation"] = wrapped
    try:
        yield
    finally:
        if had:
            model.__dict__["prepare_inputs_for_generation"] = original
        else:
            model.__dict__.pop("prepare_inputs_for_generation", None)


# -- small helpers -------------------------------------------------------------------------------------
def _bind(model, args: tuple, kwargs: dict) -> dict:
    """Positional arguments by the base model's forward parameter names."""
    if not args:
        return dict(kwargs)
    names = [n for n, p in inspect.signature(model.forward).parameters.items()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    bound = dict(zip(names, args))
    clash = sorted(set(bound) & set(kwargs))
    if clash or len(args) > len(names):
        raise TypeError(f"forward() got positional arguments that clash or do not fit: {clash or args[len(names):]}")
    return {**bound, **kwargs}


def _batch_and_length(kwargs: dict) -> tuple[int, int]:
    for key in ("input_ids", "inputs_embeds"):
        if kwargs.get(key) is not None:
            return kwargs[key].shape[0], kwargs[key].shape[1]
    raise ConfigError("prompt learning needs input_ids or inputs_embeds")


def _check_positions(site, length: int) -> None:
    if site.position_limit and site.position_shift and site.position_shift + length > site.position_limit:
        raise SurgeryError(f"{site.position_shift} virtual tokens + {length} input tokens exceed the model's "
                           f"{site.position_limit} positions (max_position_embeddings); shorten the input")


def _before(tensor: torch.Tensor, count: int, value) -> torch.Tensor:
    pad = torch.full((tensor.shape[0], count), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([pad, tensor], dim=1)


def _ones_before(mask, count: int):
    return None if mask is None else _before(mask, count, 1)


def _unplaced(site, model) -> None:
    if site.route == UNPLACED:
        raise PlanError(f"{site.reason}, so this prefix adapter cannot run on {type(model).__name__} (PEFT fails "
                        f"here too); it can only be saved and loaded")


def _no_task_ids(task_ids) -> None:
    if task_ids is not None:
        raise ConfigError("task_ids belongs to multitask prompt tuning, which surgery does not implement")
