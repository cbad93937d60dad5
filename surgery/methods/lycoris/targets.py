"""Which modules LyCORIS-style methods wrap, and their default targets.

PEFT 0.21.2's LoHa and LoKr wrap torch.nn.Linear, Conv1d and Conv2d only: not transformers' Conv1D (GPT-2),
not Conv3d, not Embedding. The refusals below say so for the layers users most often try.
"""
from __future__ import annotations

from torch import nn

from ...graph.kinds import is_conv1d
from ..default_targets import LORA_FAMILY
from ..spec import Handler

DEFAULT_TARGETS = LORA_FAMILY   # PEFT's table for this method (methods/default_targets.py)

LINEAR_LABEL = "torch.nn.Linear"


def handlers(method: str, linear: type, conv1d: type, conv2d: type) -> tuple[Handler, ...]:
    """The handler table of a LyCORIS method: its Linear/Conv1d/Conv2d layers, and clear refusals."""
    def refuse(kind: str):
        def why(base, config, fqn):
            return (f"target module {fqn!r} is a {kind}; {method} (as in PEFT) supports torch.nn.Linear, "
                    f"Conv1d and Conv2d only. Narrow target_modules (or exclude_modules) to those layers.")
        return why

    return (
        Handler(lambda m: isinstance(m, nn.Linear), linear, LINEAR_LABEL),
        Handler(lambda m: isinstance(m, nn.Conv1d), conv1d, "torch.nn.Conv1d"),
        Handler(lambda m: isinstance(m, nn.Conv2d), conv2d, "torch.nn.Conv2d"),
        # refusal rows (never built): their label repeats Linear's so the "supported" list stays true
        Handler(is_conv1d, linear, LINEAR_LABEL, refuses=refuse("transformers Conv1D (GPT-2 style)")),
        Handler(lambda m: isinstance(m, nn.Conv3d), linear, LINEAR_LABEL, refuses=refuse("Conv3d")),
    )
