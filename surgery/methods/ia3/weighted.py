"""IA3Model.add_weighted_adapter: a new (IA)^3 adapter made from existing ones (PEFT's API and arithmetic).

    l' = sum_i w_i l_i      per layer, over the adapters present on it (accumulated from zero in order)

A weighted sum of the scaling vectors, not of the scalings they apply: (IA)^3 multiplies, so this is exact
only for one adapter (reweighting it). The new adapter's config is the first one's with the union of the
target_modules and of the feedforward_modules; it is added inactive and frozen; an existing adapter_name is
left unchanged, as in PEFT.
"""
from __future__ import annotations

import dataclasses

import torch

from ...config.targets import union_of_targets
from ...rewrite.trainable import adapter_layers
from .layer import IA3Layer


def check_arguments(tuner, adapters: list[str], weights: list[float]) -> tuple:
    """(target_modules, feedforward_modules) of the combined adapter, or PEFT's error for what it refuses."""
    for adapter in adapters:
        if adapter not in tuner.peft_config:
            raise ValueError(f"Adapter {adapter} does not exist")
    if not adapters:
        raise ValueError("add_weighted_adapter needs at least one adapter to combine; got []")
    if len(weights) != len(adapters):
        raise ValueError(f"add_weighted_adapter needs one weight per adapter: got {len(weights)} weight(s) for "
                         f"{len(adapters)} adapter(s) {adapters}")
    if any(getattr(m, "_surgery_modules_to_save", False) and sum(a in m.modules_to_save for a in adapters) > 1
           for m in tuner.model.modules()):
        raise ValueError("Cannot add weighted adapters targeting the same module with modules_to_save.")
    configs = [tuner.peft_config[adapter] for adapter in adapters]
    for field in ("target_modules", "feedforward_modules"):
        if len({isinstance(getattr(c, field), str) for c in configs}) > 1:
            raise ValueError("All adapter configs should have the same type for target and feedforward modules.")
    return (union_of_targets([c.target_modules for c in configs]),
            union_of_targets([c.feedforward_modules or [] for c in configs]))


def add_weighted_adapter(tuner, adapters: list[str], weights: list[float], adapter_name: str) -> None:
    if adapter_name in tuner.peft_config:
        return
    adapters, weights = list(adapters), list(weights)
    targets, feedforward = check_arguments(tuner, adapters, weights)
    tuner.add_frozen_adapter(adapter_name, dataclasses.replace(   # as PEFT: the new adapter starts frozen
        tuner.peft_config[adapters[0]], target_modules=targets, feedforward_modules=feedforward))
    with torch.no_grad():
        for _, layer in adapter_layers(tuner.model):
            if not isinstance(layer, IA3Layer) or adapter_name not in layer.ia3_l:
                continue
            target = layer.ia3_l[adapter_name]
            target.zero_()
            for adapter, weight in zip(adapters, weights):
                if adapter in layer.ia3_l:
                    target.add_(layer.ia3_l[adapter] * weight)
