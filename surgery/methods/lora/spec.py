"""LoRA's entry in the method registry: which layer class wraps which module type, and what it adds."""
from __future__ import annotations

from typing import Optional

from torch import nn

from ...config.enums import PeftType
from ...config.lora import LoraConfig
from ...errors import PlanError
from ..registry import MethodSpec
from .conv import Conv
from .embedding import Embedding
from .linear import Linear

SUPPORTED = "torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d/2d/3d, transformers.pytorch_utils.Conv1D"

# PEFT's defaults when target_modules is not given (by transformers model_type).
DEFAULT_TARGETS = {
    "llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"], "mixtral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"], "qwen3": ["q_proj", "v_proj"], "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"], "phi3": ["qkv_proj"], "opt": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"], "gpt_neox": ["query_key_value"], "gptj": ["q_proj", "v_proj"],
    "bloom": ["query_key_value"], "falcon": ["query_key_value"], "bert": ["query", "value"],
    "roberta": ["query", "value"], "xlm-roberta": ["query", "value"], "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"], "t5": ["q", "v"], "mt5": ["q", "v"], "bart": ["q_proj", "v_proj"],
}


def base_kind(module: nn.Module) -> Optional[str]:
    """'linear', 'conv1d_gpt2', 'embedding', 'conv' or None for a module LoRA cannot wrap."""
    if getattr(module, "_surgery_adapter_layer", False):
        return base_kind(module.get_base_layer())
    if isinstance(module, nn.Linear):
        return "linear"
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return "conv1d_gpt2"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    return None


def wrapper_for(module: nn.Module, config: LoraConfig, fqn: str) -> type:
    """The LoRA layer class for this module, or a PlanError that says why not."""
    kind = base_kind(module)
    if kind is None:
        raise PlanError(f"target module {fqn!r} is a {type(module).__name__}, which LoRA cannot wrap; "
                        f"supported: {SUPPORTED}. Narrow target_modules to the leaf layers.")
    if config.use_dora and kind in ("embedding", "conv"):
        raise PlanError(f"use_dora=True on {fqn!r} ({type(module).__name__}): surgery implements DoRA for "
                        f"Linear and Conv1D layers only; exclude it with exclude_modules or set use_dora=False")
    if kind == "conv" and module.groups != 1:
        raise PlanError(f"target module {fqn!r} is a grouped convolution (groups={module.groups}); "
                        f"LoRA supports groups=1 only")
    return {"linear": Linear, "conv1d_gpt2": Linear, "embedding": Embedding, "conv": Conv}[kind]


def fan_in_fan_out_for(module: nn.Module, config: LoraConfig) -> bool:
    """Conv1D stores (in, out) and always needs fan_in_fan_out (PEFT warns and sets it); Linear never."""
    kind = base_kind(module)
    return kind == "conv1d_gpt2" or (kind == "linear" and False)


def added_params(module: nn.Module, r: int, config: LoraConfig) -> int:
    """How many parameters one LoRA adapter of rank r adds to this module."""
    base = module.get_base_layer() if getattr(module, "_surgery_adapter_layer", False) else module
    kind = base_kind(base)
    shape = tuple(base.weight.shape)
    if kind == "embedding":
        return r * (shape[0] + shape[1])
    if kind == "conv":
        kernel = 1
        for k in shape[2:]:
            kernel *= k
        out_c, in_c = shape[0], shape[1]
        total = r * in_c * kernel + out_c * r
    else:
        out_f, in_f = (shape[1], shape[0]) if kind == "conv1d_gpt2" else shape[:2]
        total = r * (in_f + out_f)
        if config.use_dora:
            total += out_f
    if config.lora_bias:
        total += shape[0] if kind != "conv1d_gpt2" else shape[1]
    return total


LORA = MethodSpec(
    peft_type=PeftType.LORA,
    config_cls=LoraConfig,
    wrapper_for=wrapper_for,
    added_params=added_params,
    default_targets=DEFAULT_TARGETS,
)
