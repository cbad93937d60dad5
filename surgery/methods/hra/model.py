"""HRAModel: PEFT's name for the HRA tuner (PeftModel.base_model), for isinstance checks in user code."""
from __future__ import annotations

from ...facade.tuner import TunerModel


class HRAModel(TunerModel):
    """Creates a Householder reflection adaptation (HRA) model from a pretrained model (PEFT's HRAModel)."""

    prefix = "hra_"   # PEFT's parameter-name prefix for this method
