"""IA3Config: PEFT's (IA)^3 fields and defaults, validated on construction.

feedforward_modules left unset is filled from the model type when the adapter is planned (PEFT's
TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING), so the saved adapter_config.json holds the names, as
PEFT's does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from ...config.base import PeftConfig
from ...config.enums import PeftType
from ...config.targets import check_targeting, compile_pattern, targeting_field
from ...errors import ConfigError


@dataclass
class IA3Config(PeftConfig):
    target_modules: Optional[Union[list[str], str]] = targeting_field("target_modules")
    exclude_modules: Optional[Union[list[str], str]] = targeting_field("exclude_modules")
    feedforward_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Targets whose input is scaled (names: a suffix of the module path; "
                                        "or a full-match regex); the others scale their output."})
    fan_in_fan_out: bool = field(default=False, metadata={"help": "Base weight stored (in, out), as GPT-2's Conv1D."})
    modules_to_save: Optional[list[str]] = targeting_field("modules_to_save")
    init_ia3_weights: bool = field(
        default=True, metadata={"help": "True: vectors start at 1 (the identity); False: N(0, 1)."})

    _method = PeftType.IA3

    def validate(self) -> None:
        name = type(self).__name__
        check_targeting(self)
        feedforward = self.feedforward_modules
        if isinstance(feedforward, str):
            compile_pattern(name, "feedforward_modules", feedforward)
        # PEFT's rule, on the literal names: checked only when both are lists
        if isinstance(feedforward, (list, tuple, set)) and isinstance(self.target_modules, (list, tuple, set)):
            missing = sorted(set(feedforward) - set(self.target_modules))
            if missing:
                raise ConfigError(
                    f"{name}.feedforward_modules = {_shown(feedforward)} is not a subset of target_modules = "
                    f"{_shown(self.target_modules)}: {missing} are not targets. Add them to target_modules or "
                    f"remove them from feedforward_modules (the names are compared literally, as PEFT does)")


def _shown(value) -> str:
    return repr(sorted(value)) if isinstance(value, set) else repr(value)
