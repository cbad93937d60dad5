"""The tuner model (PeftModel.base_model): holds the rewritten transformer as `.model`.

It exists so state-dict keys read `base_model.model.<path>` exactly as PEFT's, and it forwards every
unknown attribute to the model underneath.
"""
from __future__ import annotations

from torch import nn

from ..rewrite.merge import merge_adapters, unload, unmerge_adapters
from ..rewrite.trainable import adapter_layers


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


class LoraModel(TunerModel):
    """PEFT's name for the LoRA tuner (isinstance checks in user code keep working by name)."""
