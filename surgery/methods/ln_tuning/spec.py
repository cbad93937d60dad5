"""LN tuning's registry entry: any targeted module is wrapped (PEFT accepts every type), defaults by model_type.

PEFT's defaults are the normalisation layers; a target that is not one (a Linear, a whole block) is still copied
and trained in full, as PEFT does, with a plan warning and a flag in the audit table.
"""
from __future__ import annotations

from torch import nn

from ...config.enums import PeftType
from ..spec import Handler, MethodSpec, RewriteSite
from .config import LNTuningConfig
from .layer import LNTuningLayer
from .model import LNTuningModel

# PEFT's TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING (by transformers model_type)
DEFAULT_TARGETS = {
    "llama": ["input_layernorm", "post_attention_layernorm", "norm"],
    "bloom": ["input_layernorm", "post_attention_layernorm", "ln_f"],
    "llava": ["multi_modal_projector", "input_layernorm", "post_attention_layernorm", "norm", "embed_tokens",
              "lm_head"],
    "t5": ["layer_norm", "final_layer_norm"],
    "mt5": ["layer_norm", "final_layer_norm"],
    "bart": ["self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"],
    "gpt2": ["ln_1", "ln_2", "ln_f"],
    "blip-2": ["layernorm", "LayerNorm", "final_layer_norm", "self_attn_layer_norm"],
    "gptj": ["ln_1", "ln_f"],
    "falcon": ["input_layernorm", "post_attention_layernorm", "ln_f"],
    "mistral": ["input_layernorm", "post_attention_layernorm", "norm"],
    "phi": ["input_layernorm", "final_layernorm"],
    "gemma": ["input_layernorm", "post_attention_layernorm", "norm"],
    "gemma2": ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
               "post_feedforward_layernorm", "norm"],
    "gemma3_text": ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                    "post_feedforward_layernorm", "norm"],
    "qwen2": ["post_attention_layernorm"],
    "qwen3": ["post_attention_layernorm"],
}

_TORCH_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: torch's, or a model's own (LlamaRMSNorm, T5LayerNorm: named ...Norm). Only the
    plan's warning asks: every module is wrapped alike."""
    return isinstance(module, _TORCH_NORMS) or type(module).__name__.lower().endswith("norm")


def rewrite_params(site: RewriteSite) -> dict:
    non_norm = not is_norm(site.base)
    if non_norm:
        site.note(f"LN tuning copies each targeted module and trains the copy in full; the targeted "
                  f"{type(site.base).__name__} modules are not normalisation layers")
    names = [n for n, _ in site.base.named_parameters()]
    return {"copies": ",".join(names) if len(names) <= 3 else f"{len(names)} tensors", "non_norm": non_norm}


def added_params(base: nn.Module, params: dict, config) -> int:
    """The copy's parameters: every parameter of the module."""
    return sum(p.numel() for p in base.parameters())


SPEC = MethodSpec(
    peft_type=PeftType.LN_TUNING,
    config_cls=LNTuningConfig,
    tuner_cls=LNTuningModel,
    name="LN tuning",
    handlers=(Handler(lambda m: True, LNTuningLayer, "any module (trained as a full copy)"),),
    rewrite_params=rewrite_params,
    added_params=added_params,
    columns=(("copies", "copies"),),
    flags=(("not a norm", "non_norm"),),
    default_targets=DEFAULT_TARGETS,
    upcasts_adapters=False,   # the copies are the model's own modules: they keep its dtype (as PEFT)
)
