"""OFTModel: PEFT's name for the OFT tuner (PeftModel.base_model), for isinstance checks in user code."""
from __future__ import annotations

from ...facade.tuner import TunerModel


class OFTModel(TunerModel):
    """Creates an Orthogonal Finetuning (OFT) model from a pretrained model (PEFT's OFTModel)."""

    prefix = "oft_"   # PEFT's parameter-name prefix for this method
