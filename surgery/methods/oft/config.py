"""OFTConfig: PEFT's OFT fields and defaults, validated on construction.

The block layout is given by exactly one of `r` (number of blocks) and `oft_block_size` (their product is
each layer's input dimension): PEFT's defaults are r=0, oft_block_size=32. Whether the block size fits a
layer is checked per module at plan time (surgery/methods/oft/layout.py), where its in_features is known.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from ...config.base import PeftConfig
from ...config.enums import PeftType
from ...config.targets import check_targeting, targeting_field
from ...config.validation import check_range
from ...errors import ConfigError

logger = logging.getLogger(__name__)

# PEFT 0.18.0 changed the Cayley-Neumann series; adapters written before then compute other rotations.
_NEUMANN_CHANGED_IN = (0, 18)


@dataclass
class OFTConfig(PeftConfig):
    r: int = field(default=0, metadata={"help": "Number of OFT blocks per layer (0: derive it from oft_block_size)."})
    oft_block_size: int = field(
        default=32, metadata={"help": "Size of each OFT block (0: derive it from r); must divide in_features."})
    module_dropout: float = field(
        default=0.0, metadata={"help": "Multiplicative block dropout (PEFT 0.21.2 builds it but never applies it)."})
    target_modules: Optional[Union[list[str], str]] = targeting_field("target_modules")
    fan_in_fan_out: bool = field(default=False, metadata={"help": "Weight stored (in, out); False for nn.Linear."})
    bias: Literal["none", "all", "oft_only"] = field(default="none", metadata={"help": "Which biases train."})
    exclude_modules: Optional[Union[list[str], str]] = targeting_field("exclude_modules")
    init_weights: bool = field(
        default=True, metadata={"help": "True: zero skew parameters (identity rotation); False: N(0, 0.1)."})
    layers_to_transform: Optional[Union[list[int], int]] = targeting_field("layers_to_transform")
    layers_pattern: Optional[Union[list[str], str]] = targeting_field("layers_pattern")
    modules_to_save: Optional[list[str]] = targeting_field("modules_to_save")
    coft: bool = field(default=False, metadata={"help": "Constrained OFT: keep each block within eps of identity."})
    eps: float = field(default=6e-5, metadata={"help": "COFT's radius (only used with coft=True)."})
    block_share: bool = field(default=False, metadata={"help": "One rotation block shared by every block."})
    use_cayley_neumann: bool = field(
        default=True, metadata={"help": "Truncated Neumann series instead of the exact Cayley inverse."})
    num_cayley_neumann_terms: int = field(
        default=5, metadata={"help": "Terms of the Cayley-Neumann series (with use_cayley_neumann=True)."})

    _method = PeftType.OFT

    def validate(self) -> None:
        name = type(self).__name__
        check_range(name, "r", self.r, low=0)
        check_range(name, "oft_block_size", self.oft_block_size, low=0)
        if self.r == 0 and self.oft_block_size == 0:
            raise ConfigError(f"{name}: r = 0 and oft_block_size = 0; set exactly one of them (> 0): the other is "
                              f"derived per layer from r x oft_block_size = in_features")
        if self.r != 0 and self.oft_block_size != 0:
            raise ConfigError(f"{name}: r = {self.r} and oft_block_size = {self.oft_block_size} are both set; set "
                              f"exactly one (the other to 0), since r x oft_block_size = in_features")
        check_range(name, "module_dropout", self.module_dropout, low=0.0, high=1.0, what=" (a probability)")
        check_range(name, "eps", self.eps, low=0.0, low_open=True)
        check_range(name, "num_cayley_neumann_terms", self.num_cayley_neumann_terms, low=1)
        check_targeting(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, strict: bool = True) -> "OFTConfig":
        """As PeftConfig.from_dict, plus PEFT's checks of saved OFT configs: one without oft_block_size but with
        a rank comes from the OFT of PEFT < 0.14 (other weights); Cayley-Neumann adapters written before PEFT
        0.18 used another series (warned, as PEFT does)."""
        if isinstance(data, dict) and "oft_block_size" not in data and data.get("r"):
            raise ConfigError(f"{cls.__name__}: r = {data['r']!r} without oft_block_size (which defaults to 32): "
                              f"for a new config add oft_block_size: 0; a saved adapter like this was written by "
                              f"the OFT of PEFT < 0.14, whose weights are incompatible (retrain it)")
        config = super().from_dict(data, strict=strict)
        if config.use_cayley_neumann and config.peft_version is not None \
                and _version(config.peft_version) < _NEUMANN_CHANGED_IN:
            logger.warning("this OFT adapter was written by PEFT %s; the Cayley-Neumann parameterization changed "
                           "in PEFT 0.18.0, so it computes other rotations than it was trained with",
                           config.peft_version)
        return config


def _version(text: str) -> tuple[int, ...]:
    """(major, minor) of a version string such as '0.17.1' or '0.18.0.dev0@abc'; (0, 0) when unreadable."""
    parts = text.partition("@")[0].split(".")[:2]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        return (0, 0)
