"""BOFTModel: PEFT's name for the BOFT tuner (PeftModel.base_model), for isinstance checks in user code."""
from __future__ import annotations

from ...facade.tuner import TunerModel


class BOFTModel(TunerModel):
    """Creates a BOFT (butterfly orthogonal fine-tuning) model from a pretrained model (PEFT's BOFTModel)."""

    prefix = "boft_"   # PEFT's parameter-name prefix for this method
