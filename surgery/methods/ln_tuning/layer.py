"""LNTuningLayer: one trainable copy of the wrapped module per adapter; the active copy runs instead of it.

    ln_tuning_layers[a] = deepcopy(base)        y = ln_tuning_layers[active](x)

Merging swaps the active copy with the base module (PEFT's semantics, no arithmetic): after merge the tuned copy
*is* `base_layer` (so merge_and_unload leaves it in the model) and the original waits in `ln_tuning_layers[a]`
until unmerge swaps them back. One adapter runs, or is merged, at a time.
"""
from __future__ import annotations

import copy
from typing import Iterable, Optional, Union

import torch
from torch import nn

from ...errors import ConfigError, MergeError
from ..base_layer import AdapterLayer


class LNTuningLayer(AdapterLayer):
    adapter_layer_names = ("ln_tuning_layers",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self._modules["ln_tuning_layers"] = nn.ModuleDict()
        self.ln_tuning_layers: nn.ModuleDict

    def update_layer(self, adapter_name: str, config, copies: Optional[str] = None,
                     non_norm: Optional[bool] = None) -> None:
        """A copy of the (unmerged) module for adapter `adapter_name` (copies, non_norm: the plan's audit facts)."""
        original = self.ln_tuning_layers[self.merged_adapters[-1]] if self.merged else self.base_layer
        trains = not config.inference_mode and (not self._active_adapters or adapter_name in self._active_adapters)
        self.ln_tuning_layers[adapter_name] = copy.deepcopy(original).requires_grad_(trains)   # nested ones too
        self.mark_new_adapter(adapter_name, config)

    def set_adapter(self, adapter_names: Union[str, Iterable[str]], trainable: bool = True) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        super().set_adapter(names, trainable)
        for name, module in self.ln_tuning_layers.items():   # every parameter of each copy, nested ones too
            module.requires_grad_(trainable and name in names)

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args, **kwargs):
        state, modules = self.__dict__, self._modules   # read directly: this runs for every norm, every step
        if state["_disable_adapters"]:
            if state["merged_adapters"]:
                self.unmerge()
            return modules["base_layer"](x, *args, **kwargs)
        active = state["_active_adapters"]
        if state["merged_adapters"] or not active:
            return modules["base_layer"](x, *args, **kwargs)
        if len(active) > 1:
            raise ConfigError(f"{self._layer_name()}: LN tuning runs one adapter at a time; active adapters are "
                              f"{active} (set_adapter one of them)")
        return modules["ln_tuning_layers"]._modules[active[0]](x, *args, **kwargs)

    # -- merge: a swap -----------------------------------------------------------------------------------
    def _to_merge(self, adapter_names: Optional[list[str]]) -> list[str]:
        names = [n for n in (adapter_names or self._active_adapters)
                 if n in self.ln_tuning_layers and n not in self.merged_adapters]
        if len(names) > 1:
            raise MergeError(f"{self._layer_name()}: LN tuning merges one adapter at a time, not {names}; merge one "
                             f"(adapter_names=[...]) and unmerge it before merging another")
        return names

    @torch.no_grad()
    def check_merge(self, adapter_names: Optional[list[str]] = None) -> None:
        """Raise MergeError if the copy to merge holds NaN/inf (a safe merge refuses it); changes nothing."""
        for name in self._to_merge(adapter_names):
            if not all(torch.isfinite(t).all() for t in self.ln_tuning_layers[name].state_dict().values()
                       if t.is_floating_point()):
                raise self._non_finite(name)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        names = self._to_merge(adapter_names)
        if not names:
            return
        if safe_merge:
            self.check_merge(names)
        if self.merged:   # PEFT: another adapter is merged; unmerge it first
            self.unmerge()
        self._swap(names[0])
        self.merged_adapters.append(names[0])

    def unmerge(self) -> None:
        if self.merged_adapters:
            self._swap(self.merged_adapters.pop())

    def _swap(self, name: str) -> None:
        self._modules["base_layer"], self.ln_tuning_layers[name] = self.ln_tuning_layers[name], self._modules["base_layer"]
