"""Which modules LyCORIS-style methods wrap, and their default targets.

PEFT 0.21.2's LoHa and LoKr wrap torch.nn.Linear, Conv1d and Conv2d only: not transformers' Conv1D (GPT-2),
not Conv3d, not Embedding. The refusals below say so for the layers users most often try.
"""
from __future__ import annotations

from torch import nn

from ...graph.kinds import is_conv1d
from ..spec import Handler

# PEFT's TRANSFORMERS_MODELS_TO_{LOHA,LOKR}_TARGET_MODULES_MAPPING (copies of LoRA's), by model_type.
# gemma4's entry (a regex string, not a list) is left out: the planner expects lists here.
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
    "mixtral": ["q_proj", "v_proj"], "stablelm": ["q_proj", "v_proj"], "phi": ["q_proj", "v_proj", "fc1", "fc2"],
    "gemma": ["q_proj", "v_proj"], "gemma2": ["q_proj", "v_proj"], "gemma3_text": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"], "qwen3": ["q_proj", "v_proj"],
    "nemotron_h": ["q_proj", "k_proj", "v_proj", "o_proj"], "rwkv": ["key", "value", "receptance", "output"],
    "rwkv7": ["r_proj", "k_proj", "v_proj", "o_proj", "key", "value"],
}

LINEAR_LABEL = "torch.nn.Linear"


def handlers(method: str, linear: type, conv1d: type, conv2d: type) -> tuple[Handler, ...]:
    """The handler table of a LyCORIS method: its Linear/Conv1d/Conv2d layers, and clear refusals."""
    def refuse(kind: str):
        def why(base, config, fqn):
            return (f"target module {fqn!r} is a {kind}; {method} (as in PEFT) supports torch.nn.Linear, "
                    f"Conv1d and Conv2d only. Narrow target_modules (or exclude_modules) to those layers.")
        return why

    return (
        Handler(lambda m: isinstance(m, nn.Linear), linear, LINEAR_LABEL),
        Handler(lambda m: isinstance(m, nn.Conv1d), conv1d, "torch.nn.Conv1d"),
        Handler(lambda m: isinstance(m, nn.Conv2d), conv2d, "torch.nn.Conv2d"),
        # refusal rows (never built): their label repeats Linear's so the "supported" list stays true
        Handler(is_conv1d, linear, LINEAR_LABEL, refuses=refuse("transformers Conv1D (GPT-2 style)")),
        Handler(lambda m: isinstance(m, nn.Conv3d), linear, LINEAR_LABEL, refuses=refuse("Conv3d")),
    )
