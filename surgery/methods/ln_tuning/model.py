"""LNTuningModel: PEFT's name for the LN-tuning tuner (PeftModel.base_model)."""
from __future__ import annotations

from ...facade.tuner import TunerModel


class LNTuningModel(TunerModel):
    """Trains a copy of each targeted (normalisation) layer per adapter (PEFT's LNTuningModel)."""

    prefix = "ln_tuning_"   # PEFT's parameter-name prefix for this method
