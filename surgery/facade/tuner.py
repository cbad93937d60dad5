"""The tuner model (PeftModel.base_model): holds the rewritten transformer as `.model`.

It exists so state-dict keys read `base_model.model.<path>` exactly as PEFT's, it forwards every unknown
attribute to the model underneath, and it keeps the per-adapter state some methods share across all their
layers (`base_model.<name>.<adapter>`, where PEFT keeps them). Each method names its
subclass (PEFT's `<Method>Model`) in its spec: the class PEFT users see and check with isinstance.
"""
from __future__ import annotations

import torch
from torch import nn

from ..rewrite.merge import merge_adapters, unload, unmerge_adapters
from ..rewrite.trainable import adapter_layers


class SharedBuffers(nn.Module):
    """One shared tensor per adapter, as buffers named by adapter (PEFT's BufferDict layout)."""

    def add(self, adapter_name: str, tensor: torch.Tensor, persistent: bool) -> None:
        self.register_buffer(adapter_name, tensor, persistent=persistent)

    def remove(self, adapter_name: str) -> None:
        self._buffers.pop(adapter_name, None)
        self._non_persistent_buffers_set.discard(adapter_name)

    def persistent(self, adapter_name: str) -> bool:
        return adapter_name in self._buffers and adapter_name not in self._non_persistent_buffers_set

    def __getitem__(self, adapter_name: str) -> torch.Tensor:
        return self._buffers[adapter_name]

    def __contains__(self, adapter_name: str) -> bool:
        return adapter_name in self._buffers

    def keys(self):
        return self._buffers.keys()


class TunerModel(nn.Module):
    def __init__(self, model: nn.Module, peft_config: dict):
        super().__init__()
        self.model = model
        self.peft_config = peft_config

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    # -- shared per-adapter state ----------------------------------------------------------------------
    def add_shared_state(self, adapter_name: str, shared) -> dict[str, SharedBuffers]:
        """Keep a method's SharedState for `adapter_name` as buffers `<name>.<adapter>` of this tuner; returns
        {name: holder}. Layers keep these holders (unregistered: they are not the layers' state) and read
        `holder[adapter]` when they run, so a .to()/.half() of the model or a checkpoint load, which replace or
        fill the tuner's buffers, reaches every layer (PEFT's layers share its BufferDict the same way)."""
        holders = {}
        for key, tensor in shared.tensors.items():
            holder = self._modules.get(key)
            if holder is None:
                holder = self._modules[key] = SharedBuffers()
            holder.add(adapter_name, tensor, shared.persistent)
            holders[key] = holder
        return holders

    def delete_shared_state(self, adapter_name: str) -> None:
        for holder in self.shared_holders():
            holder.remove(adapter_name)

    def shared_holders(self):
        return [m for m in self._modules.values() if isinstance(m, SharedBuffers)]

    def shared_tensors(self, adapter_name: str, persistent_only: bool = True) -> dict[str, torch.Tensor]:
        """{name: tensor} of an adapter's shared state (the saved ones only, by default)."""
        return {key: holder[adapter_name] for key, holder in self._modules.items()
                if isinstance(holder, SharedBuffers) and adapter_name in holder
                and (holder.persistent(adapter_name) or not persistent_only)}

    # -- merge, unload, on and off ---------------------------------------------------------------------
    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False, adapter_names=None):
        return unload(self.model, merge=True, safe_merge=safe_merge, adapter_names=adapter_names,
                      progress=progressbar)

    def unload(self):
        return unload(self.model, merge=False)

    def merge_adapter(self, adapter_names=None, safe_merge: bool = False) -> None:
        merge_adapters(self.model, adapter_names, safe_merge)

    def unmerge_adapter(self) -> None:
        unmerge_adapters(self.model)

    def enable_adapter_layers(self) -> None:
        for _, layer in adapter_layers(self.model):
            layer.enable_adapters(True)

    def disable_adapter_layers(self) -> None:
        for _, layer in adapter_layers(self.model):
            layer.enable_adapters(False)
