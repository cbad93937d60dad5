"""FourierFTConfig: PEFT's FourierFT fields and defaults, validated on construction."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

from ...config.base import PeftConfig
from ...config.enums import PeftType
from ...config.targets import check_targeting, compile_pattern, targeting_field
from ...config.validation import check_range
from ...errors import ConfigError

# torch.Generator.manual_seed takes any 64-bit seed, signed or unsigned
_SEED_LOW, _SEED_HIGH = -(2 ** 63), 2 ** 64 - 1


@dataclass
class FourierFTConfig(PeftConfig):
    n_frequency: int = field(
        default=1000, metadata={"help": "Learned spectral coefficients per layer (<= in x out features)."})
    scaling: float = field(default=150.0, metadata={"help": "Factor on the inverse-FFT update (like lora_alpha)."})
    random_loc_seed: Optional[int] = field(
        default=777, metadata={"help": "Seed of the spectral locations (not saved: drawn again from the seed)."})
    fan_in_fan_out: bool = field(default=False, metadata={"help": "Base weight stored (in, out), as GPT-2's Conv1D."})
    target_modules: Optional[Union[list[str], str]] = targeting_field("target_modules")
    exclude_modules: Optional[Union[list[str], str]] = targeting_field("exclude_modules")
    bias: str = field(default="none", metadata={"help": "Which biases train: 'none', 'all' or 'fourier_only'."})
    modules_to_save: Optional[list[str]] = targeting_field("modules_to_save")
    layers_to_transform: Optional[Union[list[int], int]] = targeting_field("layers_to_transform")
    layers_pattern: Optional[Union[list[str], str]] = targeting_field("layers_pattern")
    n_frequency_pattern: Optional[dict] = field(
        default_factory=dict, metadata={"help": "Per-module n_frequency overrides: {name or regex suffix: n}."})
    init_weights: bool = field(
        default=False, metadata={"help": "False: spectrum ~ N(0, 1) (PEFT's default); True: zeros (the identity)."})

    _method = PeftType.FOURIERFT

    def validate(self) -> None:
        name = type(self).__name__
        check_range(name, "n_frequency", self.n_frequency, low=0, low_open=True)
        if not math.isfinite(self.scaling):
            raise ConfigError(f"{name}.scaling = {self.scaling!r} must be a finite number (PEFT's default: 150.0)")
        if self.random_loc_seed is None:
            raise ConfigError(f"{name}.random_loc_seed = None: the spectral locations are drawn from this seed "
                              f"(and are not saved), so it must be an integer (PEFT's default: 777)")
        check_range(name, "random_loc_seed", self.random_loc_seed, low=_SEED_LOW, high=_SEED_HIGH,
                    what=" (a 64-bit generator seed)")
        if self.bias not in ("none", "all") and not self.bias.endswith("_only"):
            raise ConfigError(f"{name}.bias = {self.bias!r} is not valid; valid: 'none', 'all', 'fourier_only'")
        check_targeting(self)
        for key, value in (self.n_frequency_pattern or {}).items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name}.n_frequency_pattern[{key!r}] = {value!r}: the keys must be module names "
                                  f"or regexes and the values positive integers")
            compile_pattern(name, "n_frequency_pattern key", key, rf".*\.{key}$")
            check_range(name, f"n_frequency_pattern[{key!r}]", value, low=0, low_open=True)
