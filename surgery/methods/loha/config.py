"""LoHaConfig: PEFT's LoHa fields and defaults (all shared with LoKr, see lycoris/config.py)."""
from __future__ import annotations

from dataclasses import dataclass

from ...config.enums import PeftType
from ..lycoris.config import LycorisConfig


@dataclass
class LoHaConfig(LycorisConfig):
    """Low-Rank Hadamard Product (LoHa): ΔW = (alpha / r) (W1a W1b) ⊙ (W2a W2b)."""

    _method = PeftType.LOHA
