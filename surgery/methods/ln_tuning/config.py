"""LNTuningConfig: PEFT's LN-tuning fields and defaults, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from ...config.base import PeftConfig
from ...config.enums import PeftType
from ...config.targets import check_targeting, targeting_field
from ...errors import ConfigError


@dataclass
class LNTuningConfig(PeftConfig):
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Modules to train as copies (names or a full-match regex); default: the "
                                        "architecture's normalisation layers."})
    exclude_modules: Optional[Union[list[str], str]] = targeting_field("exclude_modules")
    modules_to_save: Optional[Union[list[str], str]] = targeting_field("modules_to_save")

    _method = PeftType.LN_TUNING

    def validate(self) -> None:
        if isinstance(self.modules_to_save, str):   # PEFT's annotation allows it, then reads it letter by letter
            raise ConfigError(f"{type(self).__name__}.modules_to_save = {self.modules_to_save!r} is a string; give "
                              f"a list of module names, e.g. [{self.modules_to_save!r}]")
        check_targeting(self)
