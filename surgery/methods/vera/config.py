"""VeraConfig: PEFT's VeRA fields and defaults, validated on construction."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from ...config.base import PeftConfig
from ...config.enums import PeftType
from ...config.targets import check_targeting, targeting_field
from ...config.validation import check_range
from ...errors import ConfigError

# torch.Generator.manual_seed accepts this range
SEED_LOW, SEED_HIGH = -(2 ** 63), 2 ** 64 - 1


@dataclass
class VeraConfig(PeftConfig):
    r: int = field(default=256, metadata={"help": "Rank of the shared projections (higher than LoRA ranks)."})
    target_modules: Optional[Union[list[str], str]] = targeting_field("target_modules")
    projection_prng_key: int = field(
        default=0, metadata={"help": "Seed of the shared vera_A / vera_B projections."})
    save_projection: bool = field(
        default=True, metadata={"help": "Save vera_A / vera_B with the adapter (else rebuilt from the seed)."})
    vera_dropout: float = field(default=0.0, metadata={"help": "Dropout on the VeRA input."})
    d_initial: float = field(default=0.1, metadata={"help": "Initial value of every vera_lambda_d entry."})
    fan_in_fan_out: bool = field(default=False, metadata={"help": "Base weight stored (in, out), as GPT-2's Conv1D."})
    bias: Literal["none", "all", "vera_only"] = field(default="none", metadata={"help": "Which biases train."})
    modules_to_save: Optional[list[str]] = targeting_field("modules_to_save")
    init_weights: bool = field(
        default=True, metadata={"help": "True: lambda_b = 0, lambda_d = d_initial; False: 1 and N(0, 1)."})
    layers_to_transform: Optional[Union[list[int], int]] = targeting_field("layers_to_transform")
    layers_pattern: Optional[Union[list[str], str]] = targeting_field("layers_pattern")

    _method = PeftType.VERA

    def validate(self) -> None:
        name = type(self).__name__
        check_range(name, "r", self.r, low=0, low_open=True)
        check_range(name, "vera_dropout", self.vera_dropout, low=0.0, high=1.0, what=" (a probability)")
        if not math.isfinite(self.d_initial):
            raise ConfigError(f"{name}.d_initial = {self.d_initial!r} is not a finite number; use e.g. 0.1")
        check_range(name, "projection_prng_key", self.projection_prng_key, low=SEED_LOW, high=SEED_HIGH,
                    what=" (a torch.Generator seed)")
        check_targeting(self)
