"""Which parameters train: the active adapter's, modules_to_save copies, and biases per `bias` mode
("none", "all", or "<method>_only" for the targeted layers' biases)."""
from __future__ import annotations

import torch
from torch import nn

from ..graph.walk import all_modules, is_adapter_layer


def adapter_layers(model: nn.Module):
    """(fqn, layer) for every adapter layer (including modules_to_save wrappers) of the model."""
    for name, module in model.named_modules():
        if is_adapter_layer(module):
            yield name, module


def set_adapters_requires_grad(model: nn.Module, names: set[str], requires_grad: bool) -> None:
    """Turn gradients on or off for these adapters' parameters in every adapter layer (buffers stay frozen)."""
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


def mark_trainable(model: nn.Module, config, active: list[str], paths: list[str]) -> None:
    """Freeze the base model; only the `active` adapters' parameters (and biases per config.bias) train."""
    trainable = not config.inference_mode
    layers = []
    for module in all_modules(model):  # one walk: freeze everything, remember the adapter layers
        for p in module._parameters.values():
            if p is not None:
                p.requires_grad_(False)
        if is_adapter_layer(module):
            layers.append(module)
    for layer in layers:
        layer.set_adapter(active, trainable=trainable)
    if not trainable:
        return
    mode = getattr(config, "bias", "none") or "none"
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
