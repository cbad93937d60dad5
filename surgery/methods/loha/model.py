"""LoHaModel: PEFT's name for the LoHa tuner (PeftModel.base_model), for isinstance checks in user code."""
from __future__ import annotations

from ...facade.tuner import TunerModel


class LoHaModel(TunerModel):
    """Creates a Low-Rank Hadamard Product (LoHa) model from a pretrained model (PEFT's LoHaModel)."""

    prefix = "hada_"   # PEFT's parameter-name prefix for this method
