"""LoHa's registry entry: which layer class wraps which base type, each rewrite's parameters, and its cost.

Per matched module the plan records r and alpha (rank_pattern / alpha_pattern applied), the scaling alpha / r,
and whether the kernel is CP-decomposed (use_effective_conv2d on a conv with a kernel > 1).
"""
from __future__ import annotations

from torch import nn

from ...config.enums import PeftType
from ...matching.selectors import pattern_value
from ..lycoris.conv import in_per_group, kernel, kernel_numel, uses_cp
from ..lycoris.targets import DEFAULT_TARGETS, handlers
from ..spec import MethodSpec, RewriteSite
from .config import LoHaConfig
from .conv import Conv1d, Conv2d
from .linear import Linear
from .model import LoHaModel


def rewrite_params(site: RewriteSite) -> dict:
    config = site.config
    r = pattern_value(config.rank_pattern, site.fqn, config.r)
    alpha = pattern_value(config.alpha_pattern, site.fqn, config.alpha)
    if config.use_effective_conv2d and kernel(site.base) and not uses_cp(site.base, config):
        site.note("use_effective_conv2d=True has no effect on convolutions with a 1x1 kernel: PEFT flattens "
                  "them like a Linear")
    return {"r": r, "alpha": alpha, "scaling": alpha / r, "cp": uses_cp(site.base, config)}


def added_params(base: nn.Module, params: dict, config: LoHaConfig) -> int:
    """Two pairs of factors, (out + in) r each (in: per group, times the kernel unless CP), plus two CP cores."""
    r = params["r"]
    out_f = base.out_channels if kernel(base) else base.out_features
    in_f = in_per_group(base)
    if params["cp"]:
        return 2 * (r * (out_f + in_f) + r * r * kernel_numel(base))
    return 2 * r * (out_f + in_f * kernel_numel(base))


def checkpoint_rank(tensors: dict):
    factor = tensors.get("hada_w1_b")
    return factor.shape[0] if factor is not None else ""


SPEC = MethodSpec(
    peft_type=PeftType.LOHA,
    config_cls=LoHaConfig,
    tuner_cls=LoHaModel,
    name="LoHa",
    handlers=handlers("LoHa", Linear, Conv1d, Conv2d),
    rewrite_params=rewrite_params,
    added_params=added_params,
    columns=(("r", "r"), ("alpha", "alpha"), ("scaling", "scaling")),
    flags=(("CP", "cp"),),
    default_targets=DEFAULT_TARGETS,
    checkpoint_rank=checkpoint_rank,
)
