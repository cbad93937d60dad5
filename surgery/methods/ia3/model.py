"""IA3Model: PEFT's name for the (IA)^3 tuner (PeftModel.base_model), for isinstance checks in user code."""
from __future__ import annotations

from ...facade.tuner import TunerModel
from .weighted import add_weighted_adapter as _add_weighted_adapter


class IA3Model(TunerModel):
    """Creates an Infused Adapter by Inhibiting and Amplifying Inner Activations ((IA)^3) model (PEFT's IA3Model)."""

    prefix = "ia3_"   # PEFT's parameter-name prefix for this method

    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str) -> None:
        """Add adapter `adapter_name` whose vectors are sum_i weights[i] * vectors of adapters[i] on every layer
        (see surgery/methods/ia3/weighted.py). Not activated (set_adapter) and frozen."""
        _add_weighted_adapter(self, adapters, weights, adapter_name)
