"""How a module sees its adapted parameter W' during one forward, without being re-classed or re-registered.

nn.Module serves a parameter attribute (`self.gate_up_proj`) from its `_parameters` dict, through
`nn.Module.__getattr__` (`name in _parameters` then `_parameters[name]`). For the duration of a forward the
module's `_parameters` is swapped for a copy whose item lookup returns W' for the adapted names:

    module._parameters[name]  /  module.<name>    ->  W', built on first access, then the same tensor
    module._parameters.items() / .values()        ->  the stored parameters (state_dict, .parameters(), optimizers)

Built on first access, as PEFT's cached parametrization: W' then enters the autograd graph right before the op
that reads it, so in backward its factors' gradients are taken (and W's dense gradient freed) right after that
op's, instead of at the end of the module's backward (an eager W' keeps one more dense gradient alive: measured
+10% peak on an 8-expert MoE step). Once per forward: one W' per parameter whatever the number of reads; a W'
built with gradients off is rebuilt if read again with them on. Writes during the forward reach the module's own
dict. Several wrappers of one module share one copy (stacked parameter layers). A parametrized parameter
(torch.nn.utils.parametrize: a class property) gets a temporary parametrization on top instead, as in PEFT.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize


class _Shadowed(dict):
    """A module's `_parameters` with lazily built stand-ins for some names (item lookup only)."""

    def __init__(self, stored: dict):
        super().__init__(stored)
        self.stored = stored                 # the module's own dict: writes go there too
        self.builders: dict[str, Callable[[], torch.Tensor]] = {}
        self.built: dict[str, tuple[torch.Tensor, bool]] = {}

    def __getitem__(self, name: str):
        build = self.builders.get(name)
        if build is None:
            return super().__getitem__(name)
        cached = self.built.get(name)
        grad = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        if cached is None or (grad and not cached[1]):   # built without autograd, now read with it: rebuild
            cached = self.built[name] = (build(), grad)
        return cached[0]

    def __setitem__(self, name, value):
        self.stored[name] = value
        super().__setitem__(name, value)

    def __delitem__(self, name):
        self.stored.pop(name, None)
        super().__delitem__(name)


class _Replace(nn.Module):
    """A parametrization returning a fixed tensor: W' on top of an existing parametrization."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.value


@contextlib.contextmanager
def shadowed(module: nn.Module, name: str, build: Callable[[torch.Tensor], torch.Tensor]):
    """Inside the block, `module.<name>` is build(W) (W: the parameter as stored), built on first access."""
    if parametrize.is_parametrized(module, name):   # the name is a class property: one more step on top
        parametrize.register_parametrization(module, name, _Replace(build(getattr(module, name))), unsafe=True)
        try:
            yield
        finally:
            del module.parametrizations[name][-1]
        return
    params = module.__dict__["_parameters"]
    outermost = not isinstance(params, _Shadowed)
    shadow = _Shadowed(params) if outermost else params
    stored = shadow.stored[name]
    shadow.builders[name] = lambda: build(stored)
    if outermost:
        module.__dict__["_parameters"] = shadow
    try:
        yield
    finally:
        shadow.builders.pop(name, None)
        shadow.built.pop(name, None)
        if outermost:
            module.__dict__["_parameters"] = shadow.stored
