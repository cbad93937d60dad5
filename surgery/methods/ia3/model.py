"""IA3Model: PEFT's name for the (IA)^3 tuner (PeftModel.base_model), for isinstance checks in user code."""
from __future__ import annotations

from ...facade.tuner import TunerModel


class IA3Model(TunerModel):
    """Creates an Infused Adapter by Inhibiting and Amplifying Inner Activations ((IA)^3) model (PEFT's IA3Model)."""

    prefix = "ia3_"   # PEFT's parameter-name prefix for this method
