"""Prefix injection by forward pre-hooks, for models whose own forward takes no KV cache.

Backbone hook (cache route, e.g. BERT heads in transformers 5, whose BertModel takes a cache but whose
task head does not): one forward pre-hook on the backbone hands it the prefilled prefix cache while a
PeftModel forward is armed; the backbone then widens the masks and moves the positions itself, as PEFT's
backbone call does.

Attention hooks (attention route, when no module holding every attention layer takes a cache): one
forward pre-hook per self-attention module. While a prefix is armed (only during a PeftModel forward),
the hook hands the module a one-call cache object whose update() returns [prefix_k; k] and [prefix_v; v],
and widens the module's attention mask by P "attend" columns on the key side:

    scores = q @ [prefix_k; k]^T / sqrt(d) + [0 ... 0 | mask]     out = softmax(scores) @ [prefix_v; v]

The module's own attention code (eager or SDPA) runs unchanged, so nothing is wrapped or copied; the
user's tokens keep their positions (the prefix has none). Outside an armed call the hooks do nothing.
"""
from __future__ import annotations

import contextlib
import inspect
from functools import partial

import torch
from torch import nn

from ...errors import SurgeryError


class PrefixSlot:
    """What the hooks hand over in the call in progress (the per-module (key, value) list, or the backbone's
    cache); None when no call is armed."""

    def __init__(self) -> None:
        self.states = None
        self.handles: list = []

    @contextlib.contextmanager
    def armed(self, states):
        self.states = states
        try:
            yield
        finally:
            self.states = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class PrefixKV:
    """Quacks like a transformers Cache for one attention call: the prefix goes before the new keys/values."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor, where: str):
        self.key, self.value, self.where = key, value, where

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        key = self.key.to(key_states.dtype)
        if key.shape[0] != key_states.shape[0] or key.shape[1] != key_states.shape[1] \
                or key.shape[-1] != key_states.shape[-1]:
            raise SurgeryError(f"prefix at {self.where}: prefix keys are {tuple(key.shape)} (batch, heads, "
                               f"tokens, head_dim) but the module's keys are {tuple(key_states.shape)}")
        return (torch.cat([key, key_states], dim=-2),
                torch.cat([self.value.to(value_states.dtype), value_states], dim=-2))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.key.shape[-2]


def widen_mask(mask, num_prefix: int):
    """The attention mask with `num_prefix` always-attended key columns in front (None stays None)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise SurgeryError(f"prefix injection supports tensor attention masks (eager / SDPA attention), got "
                           f"{type(mask).__name__}; load the model with attn_implementation='sdpa' or 'eager'")
    shape = (*mask.shape[:-1], num_prefix)
    if mask.dtype == torch.bool:
        pad = torch.ones(shape, dtype=torch.bool, device=mask.device)
    elif mask.dim() == 2:   # (batch, keys) 0/1 masks (flash-attention style)
        pad = torch.ones(shape, dtype=mask.dtype, device=mask.device)
    else:                   # additive float mask: 0 lets a key through
        pad = torch.zeros(shape, dtype=mask.dtype, device=mask.device)
    return torch.cat([pad, mask], dim=-1)


def _hook(module, args, kwargs, *, slot: PrefixSlot, index: int, site):
    if slot.states is None:
        return None
    extra = dict(zip(site.positional[1:], args[1:]))   # read positional arguments by name
    kwargs = {**kwargs, **extra}
    if kwargs.get(site.cache_arg) is not None:
        raise SurgeryError(f"prefix injection at {site.path}: the module already got a KV cache; prefix tuning "
                           f"on this model supports single forward passes, not cached decoding")
    key, value = slot.states[index]
    kwargs[site.cache_arg] = PrefixKV(key, value, site.path)
    kwargs[site.mask_arg] = widen_mask(kwargs.get(site.mask_arg), key.shape[-2])
    return args[:1], kwargs


def _backbone_hook(module, args, kwargs, *, slot: PrefixSlot, site):
    if slot.states is None:
        return None
    names = [n for n, p in inspect.signature(module.forward).parameters.items()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    given = dict(zip(names, args))
    if kwargs.get(site.cache_arg) is not None or given.get(site.cache_arg) is not None:
        raise SurgeryError(f"prefix tuning supplies {site.cache_holder}'s KV cache ({site.cache_arg}); do not pass "
                           f"one")
    if site.cache_arg in given:   # passed positionally (as None): fill that slot
        index = names.index(site.cache_arg)
        return (*args[:index], slot.states, *args[index + 1:]), kwargs
    return args, {**kwargs, site.cache_arg: slot.states}


def install_backbone(model: nn.Module, site) -> PrefixSlot:
    """Hook the module that takes the prefix cache (site.cache_holder); the slot arms it with a cache per call."""
    slot = PrefixSlot()
    module = model.get_submodule(site.cache_holder)
    slot.handles.append(module.register_forward_pre_hook(partial(_backbone_hook, slot=slot, site=site),
                                                         with_kwargs=True))
    return slot


def install(model: nn.Module, sites) -> PrefixSlot:
    """Hook every attention module of `sites` (in layer order); the returned slot arms and removes them."""
    slot = PrefixSlot()
    for index, site in enumerate(sites):
        module = model.get_submodule(site.path)
        slot.handles.append(module.register_forward_pre_hook(partial(_hook, slot=slot, index=index, site=site),
                                                             with_kwargs=True))
    return slot
