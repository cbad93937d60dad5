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
from .conversion import supports_lora_conversion
from .conv import Conv
from .embedding import Embedding
from .init import plan_base_init
from .linear import Linear
from .mha import MultiheadAttention, added_params as _mha_added_params, refuses as _mha_refuses
from .model import LoraModel
from .options import AUXILIARY, RESTRUCTURE, TIED_MODULES, resolve_config, saves_targeted_embeddings
from .moe_conversion import convert_moe_targets
from .param_spec import PARAMETER_HANDLER
from .quantized import QUANTIZED_HANDLERS
from .weight_conversion import converted_for_initial_model

DEFAULT_TARGETS = LORA_FAMILY   # PEFT's table for this method (methods/default_targets.py)


def _embedding_refuses(base: nn.Module, config, fqn: str):
    if config.lora_bias:   # A and B are bare parameters: there is no lora_B bias to give (PEFT refuses it too)
        return f"lora_bias=True on {fqn!r} (an nn.Embedding): LoRA embeddings have no bias; set lora_bias=False"
    return None


def _conv_refuses(base: nn.Module, config, fqn: str):
    # B is a grouped 1x1 conv (r -> out, groups=base.groups): its r input channels must split into the groups
    r = pattern_value(config.rank_pattern, fqn, config.r)
    if r % base.groups != 0:
        return (f"target module {fqn!r} is a grouped convolution (groups={base.groups}) and its rank r={r} is not a "
                f"multiple of groups; choose r divisible by {base.groups} (rank_pattern for this module) or exclude it")
    return None


HANDLERS = QUANTIZED_HANDLERS + (
    Handler(is_linear_like, Linear, "torch.nn.Linear, transformers.pytorch_utils.Conv1D"),
    Handler(lambda m: isinstance(m, nn.Embedding), Embedding, "torch.nn.Embedding", refuses=_embedding_refuses),
    Handler(is_conv, Conv, "torch.nn.Conv1d/2d/3d", refuses=_conv_refuses),
    Handler(lambda m: isinstance(m, nn.MultiheadAttention), MultiheadAttention, "torch.nn.MultiheadAttention",
            refuses=_mha_refuses),
)


def rewrite_params(site: RewriteSite) -> dict:
    config = site.config
    r = pattern_value(config.rank_pattern, site.fqn, config.r)
    alpha = pattern_value(config.alpha_pattern, site.fqn, config.lora_alpha)
    settle_fan_in_fan_out(site)
    plan_base_init(site, r)   # pissa, olora, ...: refused where they cannot run, noted where they rewrite W
    if is_conv(site.base) and site.base.groups > 1:
        site.note(f"{site.fqn}: LoRA on a grouped convolution (groups={site.base.groups}) trains and runs, but "
                  f"cannot be merged (as in PEFT)")
    scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
    return {"r": r, "lora_alpha": alpha, "scaling": scaling, "use_dora": bool(config.use_dora)}


def added_params(base: nn.Module, params: dict, config: LoraConfig) -> int:
    """Parameters one LoRA adapter of rank r adds: A and B, plus DoRA's magnitude (one per output row: out
    channels, or embedding_dim) and lora_bias's bias."""
    if isinstance(base, nn.MultiheadAttention):
        return _mha_added_params(base, params, config)
    r = params["r"]
    in_f, out_f = in_out_features(base)
    if isinstance(base, nn.Embedding):
        if params.get("tied_to"):   # an embedding tied to the input embedding holds its very factors (tied_factors.py)
            return 0
        return r * (in_f + out_f) + (out_f if params["use_dora"] else 0)
    if is_conv(base):   # A: (r, in, *kernel); B: (out, r / groups, 1...)
        kernel = math.prod(weight_shape(base)[2:])
        total = r * in_f * kernel + out_f * (r // base.groups)
    else:
        total = r * (in_f + out_f)
    total += out_f if params["use_dora"] else 0
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
    model_api={"supports_lora_conversion": supports_lora_conversion},
    initial_model_conversion=converted_for_initial_model,
    prepare_config=convert_moe_targets,   # PEFT's transformers-v5 MoE config conversion (moe_conversion.py)
    parameter_handler=PARAMETER_HANDLER,   # target_parameters: LoRA on 2-D / 3-D nn.Parameters (param_wrapper.py)
    # layer_replication, trainable_token_indices, ensure_weight_tying (options.py)
    restructure=RESTRUCTURE, auxiliary=AUXILIARY, tied_modules=TIED_MODULES, resolve_config=resolve_config,
    saves_targeted_embeddings=saves_targeted_embeddings,
    checkpoint_rank=lambda tensors: next((t.shape[0] for k, t in tensors.items()
                                          if k in ("lora_A", "lora_embedding_A")), ""),
)
