"""(IA)^3's registry entry: which layer class wraps which base type, whether each target scales its input
(feed-forward) or its output, and what each adds (one vector: in or out features).
"""
from __future__ import annotations

import re

from torch import nn

from ...config.enums import PeftType
from ...graph.kinds import in_out_features, is_linear_like
from ..fan_in_fan_out import settle_fan_in_fan_out
from ..spec import Handler, MethodSpec, RewriteSite
from .config import IA3Config
from .conv import Conv
from .defaults import DEFAULT_TARGETS, resolve_feedforward
from .linear import Linear
from .model import IA3Model
from .quantized import QUANTIZED_HANDLERS

HANDLERS = QUANTIZED_HANDLERS + (
    Handler(is_linear_like, Linear, "torch.nn.Linear, transformers.pytorch_utils.Conv1D"),
    Handler(lambda m: isinstance(m, (nn.Conv2d, nn.Conv3d)), Conv, "torch.nn.Conv2d/3d"),
)


def is_feedforward(config: IA3Config, fqn: str) -> bool:
    """PEFT's test: a regex must match the whole path; a name must end it (a plain suffix, no '.' needed)."""
    feedforward = config.feedforward_modules
    if isinstance(feedforward, str):
        return re.fullmatch(feedforward, fqn) is not None
    return any(fqn.endswith(name) for name in feedforward or ())


def rewrite_params(site: RewriteSite) -> dict:
    config = site.config
    settle_fan_in_fan_out(site)
    return {"is_feedforward": is_feedforward(config, site.fqn)}


def added_params(base: nn.Module, params: dict, config: IA3Config) -> int:
    """One vector: an entry per input feature (feed-forward) or per output feature."""
    in_f, out_f = in_out_features(base)
    return in_f if params["is_feedforward"] else out_f


SPEC = MethodSpec(
    peft_type=PeftType.IA3,
    config_cls=IA3Config,
    tuner_cls=IA3Model,
    name="IA3",
    handlers=HANDLERS,
    rewrite_params=rewrite_params,
    added_params=added_params,
    columns=(("feedforward", "is_feedforward"),),
    default_targets=DEFAULT_TARGETS,
    resolve_config=resolve_feedforward,
)
