"""TrainableTokensModel: PEFT's name for the trainable-tokens tuner (PeftModel.base_model)."""
from __future__ import annotations

from ...facade.tuner import TunerModel


class TrainableTokensModel(TunerModel):
    """Trains a few rows (tokens) of an embedding matrix, and of the output head tied to it (PEFT's
    TrainableTokensModel)."""

    prefix = "trainable_tokens_"   # PEFT's parameter-name prefix for this method
