"""TRL's trainers for surgery models: SFTTrainer, DPOTrainer, GRPOTrainer, RewardTrainer (pip install 'surgery[trl]').

    from surgery import LoraConfig
    from surgery.integrations.trl import SFTTrainer            # instead of trl.SFTTrainer
    trainer = SFTTrainer(model="...", train_dataset=..., args=SFTConfig(...), peft_config=LoraConfig(r=16))

Each is TRL's trainer with surgery's checkpointing mixed in (adapter-only checkpoints in PEFT's format, resume,
best-model loading), taking `peft_config=` a surgery config or `model=` a surgery PeftModel; peft's configs and
models still work. Importing this package binds TRL's peft names to surgery as well (binding.py), which is what
lets TRL's own PEFT code paths run on surgery models: DPO's and GRPO's reference model is the base with the
adapter disabled, not a second copy of the weights.
"""
from .binding import bind, is_surgery_model
from .trainers import DPOTrainer, GRPOTrainer, RewardTrainer, SFTTrainer

__all__ = ["DPOTrainer", "GRPOTrainer", "RewardTrainer", "SFTTrainer", "bind", "is_surgery_model"]
