"""LoRA's parameter targets (LoraConfig.target_parameters) for the planner: what it refuses, each target's rank
and scaling, and its cost.

    added parameters of one target = r * E * (in + out)     (E = 1 for a 2-D parameter; see param_delta.py)

Refused: parameters that are not 2-D or 3-D (PEFT's words first), non-float ones, and the options of
param_options.py. rank_pattern / alpha_pattern keys match "<module>.<parameter>", as PEFT.
"""
from __future__ import annotations

import math
from typing import Optional

from torch import nn

from ...matching.selectors import pattern_value
from ..spec import ParameterHandler, RewriteSite
from .param_delta import layout
from .param_options import option_refusal
from .param_wrapper import ParamWrapper


def refuses(module: nn.Module, name: str, config, key: str) -> Optional[str]:
    """Why this parameter of `module` cannot get LoRA under `config` (None: it can)."""
    tensor = getattr(module, name)
    if tensor.dim() not in (2, 3):   # PEFT's words first
        return (f"lora.ParamWrapper was initialized with {tensor.dim()} dimensional Parameter, but only 2d and 3d are "
                f"supported. (target_parameters = {list(config.target_parameters)!r} selects {key!r} of shape "
                f"{tuple(tensor.shape)}: name 2-D (out x in) or 3-D (experts x out x in) parameters, such as fused "
                f"MoE expert weights)")
    if not tensor.is_floating_point():
        return (f"target_parameters selects {key!r}, a {tensor.dtype} tensor: LoRA on a parameter adds a floating-"
                f"point delta to it; quantized parameters are not supported")
    return option_refusal(config, key)


def rewrite_params(site: RewriteSite) -> dict:
    config = site.config
    r = pattern_value(config.rank_pattern, site.key, config.r)
    alpha = pattern_value(config.alpha_pattern, site.key, config.lora_alpha)
    scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
    return {"r": r, "lora_alpha": alpha, "scaling": scaling, "use_dora": False}


def added_params(tensor, params: dict, config) -> int:
    experts, in_f, out_f, _ = layout(tuple(tensor.shape), False)   # in + out does not depend on the layout flag
    return params["r"] * experts * (in_f + out_f)


PARAMETER_HANDLER = ParameterHandler(layer=ParamWrapper, label="2-D / 3-D nn.Parameter", refuses=refuses,
                                     rewrite_params=rewrite_params, added_params=added_params)
