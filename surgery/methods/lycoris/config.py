"""LycorisConfig: the fields LoHa and LoKr share (PEFT's LycorisConfig plus the fields both subclasses repeat).

Field names, defaults and saved keys are PEFT's. Validation refuses what PEFT would only fail on later (r <= 0
at injection) or silently turn into NaN (a rank dropout of 1 with the mean rescaling: 0 / 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from ...config.base import PeftConfig
from ...config.targets import check_targeting, targeting_field
from ...config.validation import check_range
from ...errors import ConfigError


@dataclass
class LycorisConfig(PeftConfig):
    rank_pattern: Optional[dict[str, int]] = field(
        default_factory=dict, metadata={"help": "Per-module rank overrides: {name or regex: r}."})
    alpha_pattern: Optional[dict[str, Union[int, float]]] = field(
        default_factory=dict, metadata={"help": "Per-module alpha overrides: {name or regex: alpha}."})
    r: int = field(default=8, metadata={"help": "Rank of the factors."})
    alpha: Union[int, float] = field(default=8, metadata={"help": "Scaling numerator: the delta is scaled by alpha / r."})
    rank_dropout: float = field(
        default=0.0, metadata={"help": "Training only: probability of zeroing each output row of the delta."})
    module_dropout: float = field(
        default=0.0, metadata={"help": "Training only: probability of skipping the whole adapter for a forward."})
    use_effective_conv2d: bool = field(
        default=False, metadata={"help": "Conv1d/Conv2d with a kernel > 1: CP-decompose the kernel (FedPara Prop. 3)."})
    target_modules: Optional[Union[list[str], str]] = targeting_field("target_modules")
    exclude_modules: Optional[Union[list[str], str]] = targeting_field("exclude_modules")
    init_weights: bool = field(
        default=True, metadata={"help": "True: the delta starts at zero; False: every factor random (testing)."})
    layers_to_transform: Optional[Union[list[int], int]] = targeting_field("layers_to_transform")
    layers_pattern: Optional[Union[list[str], str]] = targeting_field("layers_pattern")
    modules_to_save: Optional[list[str]] = targeting_field("modules_to_save")

    # whether the rank-dropout mask is divided by its mean (then a rate of 1 gives 0 / 0)
    rescales_rank_dropout = True

    def validate(self) -> None:
        name = type(self).__name__
        check_range(name, "r", self.r, low=0, low_open=True)
        check_range(name, "alpha", self.alpha, low=0, low_open=True)
        check_range(name, "rank_dropout", self.rank_dropout, low=0.0, high=1.0, what=" (a probability)")
        check_range(name, "module_dropout", self.module_dropout, low=0.0, high=1.0, what=" (a probability)")
        if self.rank_dropout == 1.0 and self.rescales_rank_dropout:
            raise ConfigError(f"{name}.rank_dropout = 1.0 drops every row and then divides by the kept fraction "
                              f"(0 / 0 = NaN in training); use a rate below 1.0{self._rank_dropout_hint()}")
        check_targeting(self)

    def _rank_dropout_hint(self) -> str:
        return ""
