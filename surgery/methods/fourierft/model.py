"""FourierFTModel: PEFT's name for the FourierFT tuner (PeftModel.base_model), for isinstance checks."""
from __future__ import annotations

from ...facade.tuner import TunerModel


class FourierFTModel(TunerModel):
    """Creates a FourierFT model from a pretrained transformers model (PEFT's FourierFTModel)."""

    prefix = "fourierft_"   # PEFT's parameter-name prefix for this method
