"""BOFTConfig: PEFT's BOFT fields and defaults, validated on construction.

What does not depend on a layer is checked here: exactly one of boft_block_size / boft_block_num, the butterfly
factor at least 1, and PEFT's layer-independent rules for more than one factor (an even block size; a block
count that 2**(factor-1) divides). The rules that involve a layer's input size are the handler's (spec.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from ...config.base import PeftConfig
from ...config.enums import PeftType
from ...config.targets import check_targeting, targeting_field
from ...config.validation import check_range
from ...errors import ConfigError


@dataclass
class BOFTConfig(PeftConfig):
    boft_block_size: int = field(
        default=4, metadata={"help": "Size b of each orthogonal block (give this or boft_block_num, not both)."})
    boft_block_num: int = field(
        default=0, metadata={"help": "Number of orthogonal blocks per layer (0: derived from boft_block_size)."})
    boft_n_butterfly_factor: int = field(
        default=1, metadata={"help": "Butterfly factors (1: plain block-diagonal OFT)."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Names (exact or '.'-suffix) or a full-match regex of modules to adapt."})
    exclude_modules: Optional[Union[list[str], str]] = targeting_field("exclude_modules")
    boft_dropout: float = field(
        default=0.0, metadata={"help": "Multiplicative dropout: the probability of a block becoming the identity."})
    fan_in_fan_out: bool = field(default=False, metadata={"help": "Weights stored (in, out) (unused: Linear/Conv2d)."})
    bias: Literal["none", "all", "boft_only"] = field(default="none", metadata={"help": "Which biases train."})
    modules_to_save: Optional[list[str]] = targeting_field("modules_to_save")
    init_weights: bool = field(
        default=True, metadata={"help": "True: R = 0, s = 1 (the identity); False: R ~ N(0, 0.1), s ~ N(1, 0.1)."})
    layers_to_transform: Optional[Union[list[int], int]] = targeting_field("layers_to_transform")
    layers_pattern: Optional[Union[list[str], str]] = targeting_field("layers_pattern")

    _method = PeftType.BOFT

    def validate(self) -> None:
        name = type(self).__name__
        check_range(name, "boft_block_size", self.boft_block_size, low=0)
        check_range(name, "boft_block_num", self.boft_block_num, low=0)
        check_range(name, "boft_n_butterfly_factor", self.boft_n_butterfly_factor, low=1)
        check_range(name, "boft_dropout", self.boft_dropout, low=0.0, high=1.0, what=" (a probability)")
        size, num = self.boft_block_size, self.boft_block_num
        if size == 0 and num == 0:
            raise ConfigError(f"{name}.boft_block_size = 0 and {name}.boft_block_num = 0: give one of them a "
                              f"positive value (block size x block count = the layer's input size)")
        if size != 0 and num != 0:
            raise ConfigError(f"{name}.boft_block_size = {size} and {name}.boft_block_num = {num}: give only one "
                              f"(set the other to 0); block size x block count = the layer's input size")
        extra = self.boft_n_butterfly_factor - 1    # factors beyond the first, PEFT's internal count
        if extra and size % 2:
            raise ConfigError(f"{name}.boft_block_size = {size} must be even with boft_n_butterfly_factor = "
                              f"{self.boft_n_butterfly_factor} (each butterfly factor splits a block in halves)")
        if extra and num and num % (2 ** extra) != 0:
            raise ConfigError(f"{name}.boft_block_num = {num} must be a multiple of 2**(boft_n_butterfly_factor-1) "
                              f"= {2 ** extra} with boft_n_butterfly_factor = {self.boft_n_butterfly_factor}")
        check_targeting(self)
