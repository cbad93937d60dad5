"""LoKrModel: PEFT's name for the LoKr tuner (PeftModel.base_model), for isinstance checks in user code."""
from __future__ import annotations

from ...facade.tuner import TunerModel


class LoKrModel(TunerModel):
    """Creates a Low-Rank Kronecker Product (LoKr) model from a pretrained model (PEFT's LoKrModel)."""

    prefix = "lokr_"   # PEFT's parameter-name prefix for this method
