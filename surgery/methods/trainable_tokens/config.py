"""TrainableTokensConfig: PEFT's trainable-tokens fields and defaults, validated on construction."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Union

from ...config.base import PeftConfig
from ...config.enums import PeftType
from ...config.targets import check_targeting
from ...config.validation import check_range
from ...errors import ConfigError


@dataclass
class TrainableTokensConfig(PeftConfig):
    token_indices: list[int] = field(
        default_factory=list, metadata={"help": "Indices of the tokens (embedding rows) to train."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Embedding layer(s) to adapt; default: the model's input embedding."})
    init_weights: bool = field(
        default=True, metadata={"help": "True: start from the current rows (a no-op); False: random rows."})

    _method = PeftType.TRAINABLE_TOKENS

    def validate(self) -> None:
        name = type(self).__name__
        for index in self.token_indices:
            check_range(name, "token_indices[...]", index, low=0)
        repeated = sorted(i for i, n in Counter(self.token_indices).items() if n > 1)
        if repeated:
            raise ConfigError(f"{name}.token_indices = {self.token_indices!r} repeats {repeated}: one trainable row "
                              f"per token; list each index once")
        check_targeting(self)
