"""modules_to_save: a full trainable copy of a module per adapter, beside the frozen original.

State-dict layout as PEFT: <path>.original_module.* and <path>.modules_to_save.<adapter>.*;
saved under the plain base key (<path>.weight).
"""
from __future__ import annotations

import copy
from typing import Iterable, Union

import torch
from torch import nn

from ..errors import AdapterNameError
from ..naming import names_for_rows


def check_one_copy_each(layers, names: list[str]) -> None:
    """Refuse activating two adapters that both hold a copy of one module: a trained copy replaces the module,
    so two copies cannot both run (PEFT's rule and first words). Wrappers whose class sets `one_active_adapter`
    (this one, and others such as trained embedding rows) are held to the same rule."""
    for fqn, layer in layers:
        holding = [n for n in names if getattr(type(layer), "one_active_adapter", False) and
                   n in layer.adapter_names()]
        if len(holding) > 1:
            raise AdapterNameError(f"Only one adapter can be set at a time for {type(layer).__name__} at {fqn!r}, "
                                   f"got {len(holding)} ({holding}): a trained copy replaces the module, so two "
                                   f"copies cannot both run; activate one of them")


class ModulesToSaveWrapper(nn.Module):
    _surgery_adapter_layer = True
    _surgery_modules_to_save = True
    one_active_adapter = True   # check_one_copy_each
    adapter_layer_names = ("modules_to_save",)   # PEFT's attribute: where the per-adapter copies live
    other_param_names: tuple = ()

    def __init__(self, module: nn.Module):
        super().__init__()
        self.original_module = module
        self.modules_to_save = nn.ModuleDict()
        self._active_adapters: list[str] = []
        self._disable_adapters = False
        self.merged_adapters: list[str] = []

    def get_base_layer(self) -> nn.Module:
        return self.original_module

    def __getattr__(self, name: str):
        """Attributes the wrapper lacks (weight, bias, in_features, ...) are the current module's: the active
        copy, or the original when adapters are off (as PEFT), so code reading them sees what forward uses."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("original_module", "modules_to_save", "_active_adapters", "_disable_adapters"):
                raise
            return getattr(self._current(), name)

    @property
    def active_adapters(self) -> list[str]:
        return self._active_adapters

    @property
    def merged(self) -> bool:
        return False

    @property
    def disable_adapters(self) -> bool:
        return self._disable_adapters

    @property
    def _adapters(self) -> set[str]:
        """PEFT's attribute: the adapters holding a copy here."""
        return set(self.modules_to_save.keys())

    def update(self, adapter_name: str, trainable: bool = True, tied_to: "ModulesToSaveWrapper" = None) -> None:
        """A trainable copy for `adapter_name`. tied_to: a wrapper whose original shares parameters with this one's
        (a tied head): the copy shares that wrapper's copy of them, so the tie holds in training and merging."""
        memo = {}
        if tied_to is not None:
            theirs = dict(tied_to.modules_to_save[adapter_name].named_parameters())
            memo = {id(p): theirs[n] for n, p in tied_to.original_module.named_parameters() if n in theirs}
        self.modules_to_save[adapter_name] = copy.deepcopy(self.original_module, memo)
        self.modules_to_save[adapter_name].requires_grad_(trainable)
        self.original_module.requires_grad_(False)

    def adapter_names(self) -> list[str]:
        return list(self.modules_to_save.keys())

    def _all_available_adapter_names(self) -> list[str]:
        return sorted(self.modules_to_save.keys())

    def set_adapter(self, adapter_names: Union[str, Iterable[str]], trainable: bool = True) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for name, module in self.modules_to_save.items():
            module.requires_grad_(trainable and name in names)
        self._active_adapters = [n for n in names if n in self.modules_to_save]

    def enable_adapters(self, enabled: bool) -> None:
        self._disable_adapters = not enabled

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.modules_to_save:
            del self.modules_to_save[adapter_name]
        self._active_adapters = [n for n in self._active_adapters if n != adapter_name]

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        pass

    def unmerge(self) -> None:
        pass

    def _current(self) -> nn.Module:
        if self._disable_adapters or not self._active_adapters:
            return self.original_module
        return self.modules_to_save[self._active_adapters[0]]

    def forward(self, *args, **kwargs):
        batch_adapters = getattr(self, "_batch_adapters", None)
        if batch_adapters is None or self._disable_adapters:
            return self._current()(*args, **kwargs)
        # One head per sample: run each copy on the whole batch, keep its own rows (heads are small).
        out = self.original_module(*args, **kwargs)
        batch_adapters = names_for_rows(batch_adapters, out.shape[0])
        for name in dict.fromkeys(batch_adapters):
            if name in self.modules_to_save:
                rows = torch.tensor([i for i, a in enumerate(batch_adapters) if a == name], device=out.device)
                out = out.index_copy(0, rows, self.modules_to_save[name](*args, **kwargs)[rows])
        return out

    def unwrapped(self) -> nn.Module:
        """The module to keep when unloading: the active trained copy (merge) or the original."""
        return self._current()
