"""PEFT's `peft.optimizers`: optimizers built for adapters (LoRA+)."""
from .methods.lora.loraplus import create_loraplus_optimizer

__all__ = ["create_loraplus_optimizer"]
