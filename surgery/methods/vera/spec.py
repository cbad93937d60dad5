"""VeRA's registry entry: Linear and Conv1D layers, the shared projections, and its cost (λ_b + λ_d per layer;
the projections are buffers, not parameters, so PEFT's trainable-parameter line leaves them out)."""
from __future__ import annotations

from torch import nn

from ...config.enums import PeftType
from ...graph.kinds import in_out_features, is_linear_like
from ..fan_in_fan_out import settle_fan_in_fan_out
from ..spec import Handler, MethodSpec, RewriteSite
from .config import VeraConfig
from .layer import Linear
from .model import VeraModel
from .projections import shared_state

# PEFT's TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING (gemma4's entry is a regex string, as PEFT's)
DEFAULT_TARGETS = {
    "t5": ["q", "v"], "mt5": ["q", "v"], "bart": ["q_proj", "v_proj"], "gpt2": ["c_attn"],
    "bloom": ["query_key_value"], "blip-2": ["q", "v", "q_proj", "v_proj"], "opt": ["q_proj", "v_proj"],
    "gptj": ["q_proj", "v_proj"], "gpt_neox": ["query_key_value"], "gpt_neo": ["q_proj", "v_proj"],
    "bert": ["query", "value"], "roberta": ["query", "value"], "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"], "deberta-v2": ["query_proj", "value_proj"], "deberta": ["in_proj"],
    "layoutlm": ["query", "value"], "llama": ["q_proj", "v_proj"], "llama4": ["q_proj", "v_proj"],
    "chatglm": ["query_key_value"], "gpt_bigcode": ["c_attn"], "mpt": ["Wqkv"],
    "RefinedWebModel": ["query_key_value"], "RefinedWeb": ["query_key_value"], "falcon": ["query_key_value"],
    "btlm": ["c_proj", "c_attn"], "codegen": ["qkv_proj"], "mistral": ["q_proj", "v_proj"],
    "mixtral": ["q_proj", "v_proj"], "stablelm": ["q_proj", "v_proj"], "phi": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"], "gemma2": ["q_proj", "v_proj"], "gemma3_text": ["q_proj", "v_proj"],
    "gemma4": r".*language_model\..*\.(q_proj|v_proj)",
    "qwen2": ["q_proj", "v_proj"], "qwen3": ["q_proj", "v_proj"],
    "nemotron_h": ["q_proj", "k_proj", "v_proj", "o_proj"], "rwkv": ["key", "value", "receptance", "output"],
    "rwkv7": ["r_proj", "k_proj", "v_proj", "o_proj", "key", "value"],
}

HANDLERS = (Handler(is_linear_like, Linear, "torch.nn.Linear, transformers.pytorch_utils.Conv1D"),)


def rewrite_params(site: RewriteSite) -> dict:
    settle_fan_in_fan_out(site)
    if not site.config.save_projection:
        site.note("save_projection=False: vera_A / vera_B are not saved with the adapter; loading rebuilds them from "
                  "projection_prng_key (PEFT's draws, on a CPU generator), as PEFT warns")
    return {"r": site.config.r}


def added_params(base: nn.Module, params: dict, config: VeraConfig) -> int:
    """vera_lambda_b (out) and vera_lambda_d (r)."""
    return in_out_features(base)[1] + params["r"]


SPEC = MethodSpec(
    peft_type=PeftType.VERA,
    config_cls=VeraConfig,
    tuner_cls=VeraModel,
    name="VeRA",
    handlers=HANDLERS,
    rewrite_params=rewrite_params,
    added_params=added_params,
    columns=(("r", "r"),),
    default_targets=DEFAULT_TARGETS,
    shared_state=shared_state,
    checkpoint_rank=lambda tensors: next((t.shape[0] for k, t in tensors.items() if k == "vera_lambda_d"), ""),
)
