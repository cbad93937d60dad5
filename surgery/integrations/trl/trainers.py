"""TRL's trainers with SurgeryTrainerMixin in front: one class per TRL trainer, made by one function."""
from __future__ import annotations

import trl

from ..trainer import SurgeryTrainerMixin
from .binding import bind

bind()


def with_surgery_checkpoints(trl_trainer: type) -> type:
    """`class <Name>(SurgeryTrainerMixin, trl.<Name>)`: TRL's trainer, saving and resuming surgery adapters."""
    doc = (f"trl.{trl_trainer.__name__} for surgery models: `peft_config=` a surgery config (or a surgery PeftModel "
           f"as `model`); checkpoints hold the adapter in PEFT's format. Arguments as trl.{trl_trainer.__name__}.")
    return type(trl_trainer.__name__, (SurgeryTrainerMixin, trl_trainer), {"__doc__": doc, "__module__": __name__})


SFTTrainer = with_surgery_checkpoints(trl.SFTTrainer)
DPOTrainer = with_surgery_checkpoints(trl.DPOTrainer)
GRPOTrainer = with_surgery_checkpoints(trl.GRPOTrainer)
RewardTrainer = with_surgery_checkpoints(trl.RewardTrainer)
