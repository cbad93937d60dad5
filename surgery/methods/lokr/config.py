"""LoKrConfig: PEFT's LoKr fields and defaults (LoHa's, see lycoris/config.py, plus the Kronecker options)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

from ...config.enums import PeftType
from ...errors import ConfigError
from ..lycoris.config import LycorisConfig


@dataclass
class LoKrConfig(LycorisConfig):
    """Low-Rank Kronecker Product (LoKr): ΔW = (alpha / r) W1 ⊗ W2."""

    init_weights: Union[bool, Literal["lycoris"]] = field(
        default=True, metadata={"help": "True: W1 = 0; 'lycoris': W2 = 0 (the LyCORIS repository's way); "
                                        "False: every factor random (testing)."})
    decompose_both: bool = field(
        default=False, metadata={"help": "Also make W1 a rank-r product (when r < max(a, c) / 2)."})
    decompose_factor: int = field(
        default=-1, metadata={"help": "Split dimensions as (factor, dim / factor) when it divides them; -1: near "
                                      "the square root."})
    rank_dropout_scale: bool = field(
        default=False, metadata={"help": "Divide the rank-dropout mask by its mean (keeps the expected delta)."})

    _method = PeftType.LOKR

    @property
    def rescales_rank_dropout(self) -> bool:
        return bool(self.rank_dropout_scale)

    def _rank_dropout_hint(self) -> str:
        return " or rank_dropout_scale=False"

    def validate(self) -> None:
        super().validate()
        if self.decompose_factor == 0 or self.decompose_factor < -1:
            raise ConfigError(f"{type(self).__name__}.decompose_factor = {self.decompose_factor!r} is not valid; "
                              f"it must be -1 (split near the square root) or a positive integer")
