"""Which parameters train: the active adapter's, modules_to_save copies, and biases per `bias` mode
("none", "all", or "<method>_only" for the targeted layers' biases).

mark_trainable sets every flag of the model (the base frozen, each adapter layer's set_adapter). Adding an
adapter does not need that: mark_added (rewrite/added.py) sets only the new adapter's flags when the model is
still as mark_trainable left it, which `_MARKED` records and flags_changed() (any other change of adapters'
flags through surgery) voids.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from ..graph.walk import all_modules, is_adapter_layer

# model -> (active adapters, trainable, epoch) of the last mark_trainable with bias "none" on it
_MARKED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_EPOCH = [0]


def flags_changed() -> None:
    """Adapters' requires_grad flags were changed outside mark_trainable (set_requires_grad, layers turned off
    or on): the next add re-derives every flag instead of trusting the recorded state."""
    _EPOCH[0] += 1


def marked_state(model: nn.Module, active: list[str], trainable: bool) -> bool:
    """Whether `model`'s flags are as mark_trainable(active, trainable, bias "none") left them, as far as surgery
    knows (flags set by hand on parameters are not seen)."""
    return _MARKED.get(model) == (tuple(active), trainable, _EPOCH[0])


def adapter_layers(model: nn.Module):
    """(fqn, layer) for every adapter layer (including modules_to_save wrappers) of the model."""
    for name, module in model.named_modules():
        if is_adapter_layer(module):
            yield name, module


def set_adapters_requires_grad(model: nn.Module, names: set[str], requires_grad: bool) -> None:
    """Turn gradients on or off for these adapters' parameters in every adapter layer (buffers stay frozen)."""
    flags_changed()
    for _, layer in adapter_layers(model):
        holders = [layer.modules_to_save] if getattr(layer, "_surgery_modules_to_save", False) else \
            [holder for _, holder in layer.adapter_containers()]
        for holder in holders:
            for key in names & set(holder.keys()):
                value = holder[key]
                params = [value] if isinstance(value, nn.Parameter) else \
                    [] if isinstance(value, torch.Tensor) else list(value.parameters())
                for param in params:
                    param.requires_grad_(requires_grad)


def freeze_under(root: nn.Module) -> list[nn.Module]:
    """Freeze every parameter under `root` (each module once); returns its adapter layers, in walk order. Every
    adapter's parameters are visited, so the loop is kept tight: reading a flag costs half of setting it."""
    layers = []
    for module in all_modules(root):
        for p in module._parameters.values():
            if p is not None and p.requires_grad:
                p.requires_grad_(False)
        if is_adapter_layer(module):
            layers.append(module)
    return layers


def mark_trainable(model: nn.Module, config, active: list[str], paths: list[str]) -> None:
    """Freeze the base model; only the `active` adapters' parameters (and biases per config.bias) train."""
    trainable = not config.inference_mode
    layers = freeze_under(model)   # one walk: freeze everything, remember the adapter layers
    for layer in layers:
        layer.set_adapter(active, trainable=trainable)
    mode = getattr(config, "bias", "none") or "none"
    if mode == "none":
        _MARKED[model] = (tuple(active), trainable, _EPOCH[0])
    else:   # trained biases are not part of the recorded state: the next add sets every flag again
        _MARKED.pop(model, None)
    if not trainable:
        return
    if mode == "all":
        for n, p in model.named_parameters():
            if n == "bias" or n.endswith(".bias"):
                p.requires_grad_(True)
        for layer in layers:  # as PEFT: the original of a modules_to_save copy stays frozen
            if getattr(layer, "_surgery_modules_to_save", False):
                layer.original_module.requires_grad_(False)
    elif mode.endswith("_only"):   # "<method>_only": the targeted layers' own biases (PEFT's rule)
        for path in paths:
            base = model.get_submodule(path).get_base_layer()
            if getattr(base, "bias", None) is not None:
                base.bias.requires_grad_(True)
