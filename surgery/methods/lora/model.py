"""LoraModel: PEFT's name for the LoRA tuner (PeftModel.base_model), for isinstance checks in user code."""
from __future__ import annotations

from ...facade.tuner import TunerModel


class LoraModel(TunerModel):
    """Creates a Low Rank Adapter (LoRA) model from a pretrained transformers model (PEFT's LoraModel)."""

    prefix = "lora_"   # PEFT's parameter-name prefix for this method
