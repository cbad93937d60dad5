"""HRAConfig: PEFT's HRA fields and defaults, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from ...config.base import PeftConfig
from ...config.enums import PeftType
from ...config.targets import check_targeting, targeting_field
from ...config.validation import check_range


@dataclass
class HRAConfig(PeftConfig):
    r: int = field(default=8, metadata={"help": "Number of Householder reflections (even, for the identity init)."})
    apply_GS: bool = field(default=False, metadata={"help": "Orthonormalise the vectors (Gram-Schmidt) first."})
    target_modules: Optional[Union[list[str], str]] = targeting_field("target_modules")
    exclude_modules: Optional[Union[list[str], str]] = targeting_field("exclude_modules")
    init_weights: bool = field(
        default=True, metadata={"help": "True: symmetric init (H = I for even r); False: random kaiming vectors."})
    layers_to_transform: Optional[Union[list[int], int]] = targeting_field("layers_to_transform")
    layers_pattern: Optional[Union[list[str], str]] = targeting_field("layers_pattern")
    bias: Literal["none", "all", "hra_only"] = field(default="none", metadata={"help": "Which biases train."})
    modules_to_save: Optional[list[str]] = targeting_field("modules_to_save")

    _method = PeftType.HRA

    def validate(self) -> None:
        check_range(type(self).__name__, "r", self.r, low=0, low_open=True)
        check_targeting(self)
