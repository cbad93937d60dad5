"""LoKr's registry entry: which layer class wraps which base type, each rewrite's parameters, and its cost.

Per matched module the plan records r and alpha (rank_pattern / alpha_pattern applied), the scaling alpha / r,
and the Kronecker shapes (factorization.py): `kron` for the audit table, `cp` for its flag.
"""
from __future__ import annotations

import math

from torch import nn

from ...config.enums import PeftType
from ...matching.selectors import pattern_value
from ..lycoris.conv import kernel, uses_cp
from ..lycoris.targets import DEFAULT_TARGETS, handlers
from ..spec import MethodSpec, RewriteSite
from .config import LoKrConfig
from .conv import Conv1d, Conv2d
from .factorization import kron_layout
from .linear import Linear
from .model import LoKrModel


def rewrite_params(site: RewriteSite) -> dict:
    config = site.config
    r = pattern_value(config.rank_pattern, site.fqn, config.r)
    alpha = pattern_value(config.alpha_pattern, site.fqn, config.alpha)
    layout = kron_layout(site.base, r, config)
    if config.use_effective_conv2d and kernel(site.base) and not uses_cp(site.base, config):
        site.note("use_effective_conv2d=True has no effect on convolutions with a 1x1 kernel: PEFT flattens "
                  "them like a Linear")
    return {"r": r, "alpha": alpha, "scaling": alpha / r, "kron": layout.describe(r), "cp": layout.cp}


def added_params(base: nn.Module, params: dict, config: LoKrConfig) -> int:
    """W1 (a c, or r (a + c)) plus W2 (b d k, r (b + d k), or a CP core r² k plus r (b + d))."""
    r = params["r"]
    layout = kron_layout(base, r, config)
    a, b, c, d, k = layout.a, layout.b, layout.c, layout.d, math.prod(layout.kernel)
    w1 = a * c if layout.full_w1 else r * (a + c)
    if layout.full_w2:
        w2 = b * d * k
    elif layout.cp:
        w2 = r * r * k + r * (b + d)
    else:
        w2 = r * (b + d * k)
    return w1 + w2


def checkpoint_rank(tensors: dict):
    """r from a low-rank factor's (r, ...) side; '' when both factors are full matrices (r only scales)."""
    factor = tensors.get("lokr_w2_b", tensors.get("lokr_w1_b"))
    return factor.shape[0] if factor is not None else ""


SPEC = MethodSpec(
    peft_type=PeftType.LOKR,
    config_cls=LoKrConfig,
    tuner_cls=LoKrModel,
    name="LoKr",
    handlers=handlers("LoKr", Linear, Conv1d, Conv2d),
    rewrite_params=rewrite_params,
    added_params=added_params,
    columns=(("r", "r"), ("alpha", "alpha"), ("scaling", "scaling"), ("W1⊗W2", "kron")),
    flags=(("CP", "cp"),),
    default_targets=DEFAULT_TARGETS,
    checkpoint_rank=checkpoint_rank,
)
