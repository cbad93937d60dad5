"""VeraModel: PEFT's name for the VeRA tuner (PeftModel.base_model); it holds the shared projections as
`vera_A` / `vera_B` ({adapter: tensor}), where PEFT keeps them."""
from __future__ import annotations

from ...facade.tuner import TunerModel


class VeraModel(TunerModel):
    """Creates a Vector-based Random Matrix Adaptation (VeRA) model from a pretrained model (PEFT's VeraModel)."""

    prefix = "vera_lambda_"   # PEFT's parameter-name prefix for this method
    uses_shared_state = True   # the projections vera_A / vera_B live here
