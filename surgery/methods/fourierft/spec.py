"""FourierFT's registry entry: nn.Linear and transformers' Conv1D, n_frequency per module (n_frequency_pattern
applied with PEFT's lookup), each rewrite adding its n coefficients.
"""
from __future__ import annotations

import re

from torch import nn

from ...config.enums import PeftType
from ...graph.kinds import in_out_features, is_linear_like
from ..fan_in_fan_out import settle_fan_in_fan_out
from ..default_targets import FOURIERFT
from ..spec import Handler, MethodSpec, RewriteSite
from .config import FourierFTConfig
from .layer import FourierFTLinear
from .model import FourierFTModel

DEFAULT_TARGETS = FOURIERFT   # PEFT's table for this method (methods/default_targets.py)


def n_frequency_for(config: FourierFTConfig, fqn: str) -> int:
    """PEFT's lookup: the first key k with re.match(rf'.*\\.{k}$', fqn), else the full path itself as a key."""
    patterns = config.n_frequency_pattern or {}
    key = next((k for k in patterns if re.match(rf".*\.{k}$", fqn)), fqn)
    return patterns.get(key, config.n_frequency)


def _too_many_frequencies(base: nn.Module, config: FourierFTConfig, fqn: str):
    in_f, out_f = in_out_features(base)
    n = n_frequency_for(config, fqn)
    if n > in_f * out_f:
        return (f"n_frequency = {n} for {fqn!r} ({out_f} x {in_f}) exceeds its {in_f * out_f} weight entries; "
                f"lower n_frequency or give this module a smaller one in n_frequency_pattern")
    return None


HANDLERS = (
    Handler(is_linear_like, FourierFTLinear, "torch.nn.Linear, transformers.pytorch_utils.Conv1D",
            refuses=_too_many_frequencies),
)


def rewrite_params(site: RewriteSite) -> dict:
    config = site.config
    settle_fan_in_fan_out(site)
    return {"n_frequency": n_frequency_for(config, site.fqn), "scaling": config.scaling}


def added_params(base: nn.Module, params: dict, config: FourierFTConfig) -> int:
    return params["n_frequency"]


SPEC = MethodSpec(
    peft_type=PeftType.FOURIERFT,
    config_cls=FourierFTConfig,
    tuner_cls=FourierFTModel,
    name="FourierFT",
    handlers=HANDLERS,
    rewrite_params=rewrite_params,
    added_params=added_params,
    columns=(("n_frequency", "n_frequency"), ("scaling", "scaling")),
    default_targets=DEFAULT_TARGETS,
    checkpoint_rank=lambda tensors: next((t.shape[0] for k, t in tensors.items() if k == "fourierft_spectrum"), ""),
)
