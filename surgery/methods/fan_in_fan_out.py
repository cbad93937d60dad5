"""fan_in_fan_out, the config field several methods share: whether the base weight is stored (in, out), as
transformers' Conv1D stores it. Layers read the layout from the base module itself; the config follows PEFT,
which sets the field while it wraps each target (False for a torch Linear, True for a Conv1D), so the saved
adapter_config.json holds what PEFT's would."""
from __future__ import annotations

from torch import nn

from ..graph.kinds import is_conv1d
from .spec import RewriteSite


def settle_fan_in_fan_out(site: RewriteSite, conv1d: bool = True) -> None:
    """Note and set fan_in_fan_out for this target as PEFT does (conv1d: whether the method wraps Conv1D)."""
    config = site.config
    if conv1d and is_conv1d(site.base) and not config.fan_in_fan_out:
        site.note("transformers Conv1D layers store weights (in, out): fan_in_fan_out is set to True for them, "
                  "as PEFT does")
        config.fan_in_fan_out = True
    elif isinstance(site.base, nn.Linear) and config.fan_in_fan_out:
        site.note("fan_in_fan_out=True but the targets are torch Linear layers: using False for them, as PEFT does")
        config.fan_in_fan_out = False
