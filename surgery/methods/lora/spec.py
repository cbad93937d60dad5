"""LoRA's registry entry: which layer class wraps which base type, each rewrite's parameters, and its cost.

Per matched module the plan records r and lora_alpha (rank_pattern / alpha_pattern applied), the scaling
(alpha / r, or alpha / sqrt(r) with rsLoRA) and whether DoRA is on; the layer is built from exactly these.
"""
from __future__ import annotations

import math

from torch import nn

from ...config.enums import PeftType
from ...graph.kinds import in_out_features, is_conv, is_linear_like, weight_shape
from ...matching.selectors import pattern_value
from ..fan_in_fan_out import settle_fan_in_fan_out
from ..default_targets import LORA_FAMILY
from ..spec import Handler, MethodSpec, RewriteSite
from .config import LoraConfig
from .conv import Conv
from .embedding import Embedding
from .linear import Linear
from .model import LoraModel

DEFAULT_TARGETS = LORA_FAMILY   # PEFT's table for this method (methods/default_targets.py)


def _no_dora(base: nn.Module, config, fqn: str):
    if config.use_dora:
        return (f"use_dora=True on {fqn!r} ({type(base).__name__}): surgery implements DoRA for Linear and Conv1D "
                f"layers only; exclude it with exclude_modules or set use_dora=False")
    return None


def _conv_refuses(base: nn.Module, config, fqn: str):
    if base.groups != 1:
        return f"target module {fqn!r} is a grouped convolution (groups={base.groups}); LoRA supports groups=1 only"
    return _no_dora(base, config, fqn)


HANDLERS = (
    Handler(is_linear_like, Linear, "torch.nn.Linear, transformers.pytorch_utils.Conv1D"),
    Handler(lambda m: isinstance(m, nn.Embedding), Embedding, "torch.nn.Embedding", refuses=_no_dora),
    Handler(is_conv, Conv, "torch.nn.Conv1d/2d/3d", refuses=_conv_refuses),
)


def rewrite_params(site: RewriteSite) -> dict:
    config = site.config
    r = pattern_value(config.rank_pattern, site.fqn, config.r)
    alpha = pattern_value(config.alpha_pattern, site.fqn, config.lora_alpha)
    settle_fan_in_fan_out(site)
    scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
    return {"r": r, "lora_alpha": alpha, "scaling": scaling, "use_dora": bool(config.use_dora)}


def added_params(base: nn.Module, params: dict, config: LoraConfig) -> int:
    """Parameters one LoRA adapter of rank r adds: A and B, plus DoRA's magnitude and lora_bias's bias."""
    r = params["r"]
    in_f, out_f = in_out_features(base)
    if isinstance(base, nn.Embedding):
        return r * (in_f + out_f)
    if is_conv(base):
        kernel = math.prod(weight_shape(base)[2:])
        total = r * in_f * kernel + out_f * r
    else:
        total = r * (in_f + out_f) + (out_f if params["use_dora"] else 0)
    return total + (out_f if config.lora_bias else 0)


SPEC = MethodSpec(
    peft_type=PeftType.LORA,
    config_cls=LoraConfig,
    tuner_cls=LoraModel,
    name="LoRA",
    handlers=HANDLERS,
    rewrite_params=rewrite_params,
    added_params=added_params,
    columns=(("r", "r"), ("alpha", "lora_alpha"), ("scaling", "scaling")),
    flags=(("DoRA", "use_dora"),),
    default_targets=DEFAULT_TARGETS,
    mixed_batch=True,
    collapsed_keys=("lora_magnitude_vector",),
    checkpoint_rank=lambda tensors: next((t.shape[0] for k, t in tensors.items()
                                          if k in ("lora_A", "lora_embedding_A")), ""),
)
