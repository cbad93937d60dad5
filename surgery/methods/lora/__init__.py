"""LoRA (Hu et al. 2021) with rsLoRA and DoRA, for Linear, transformers' Conv1D, Embedding and Conv1d/2d/3d.

    y = W x + b  +  s * B(A(dropout(x)))          A: (r, in), B: (out, r), s = alpha / r (alpha / sqrt(r): rsLoRA)
    DoRA: W' = m * (W + s B A) / ||W + s B A||_row

    config.py  LoraConfig           layer.py   LoraLayer (update, forward, merge)
    spec.py    the registry entry   linear.py / embedding.py / conv.py   the layer types
    model.py   LoraModel            dora.py, fused.py, mixed.py, init.py
    quantized.py  QLoRA layers (bitsandbytes 4-bit / 8-bit bases)   conversion.py  convert_to_lora (any additive adapter)
    init.py    init_lora_weights: the registry; init_options.py (values, LoftQConfig), init_svd.py (PiSSA, OLoRA),
               loftq.py / loftq_quant.py / loftq_replace.py (LoftQ), corda.py (CorDA),
               weight_conversion.py (PiSSA/OLoRA/CorDA -> LoRA), eva.py / eva_load.py / eva_inputs.py / eva_pca.py /
               eva_config.py (EVA: get_eva_state_dict, initialize_lora_eva_weights, EvaConfig)
    param_wrapper.py  ParamWrapper: LoRA on nn.Parameters (target_parameters, fused MoE experts); param_delta.py,
               param_spec.py
    hotswap.py / hotswap_prepare.py   PEFT's hot-swapping (new weights into a loaded adapter, torch.compile-safe)
    options.py  the structural options' hooks: replication.py (layer_replication), token_indices.py
               (trainable_token_indices), weight_tying.py / tied_factors.py (ensure_weight_tying); option_checks.py
"""
from .config import LoraConfig, LoraRuntimeConfig
from .conversion import convert_to_lora, save_as_lora
from .hotswap import check_hotswap_configs_compatible, hotswap_adapter, hotswap_adapter_from_state_dict
from .hotswap_prepare import prepare_model_for_compiled_hotswap
from .corda import preprocess_corda
from .eva import get_eva_state_dict
from .eva_config import EvaConfig
from .eva_load import initialize_lora_eva_weights
from .init_options import CordaConfig, LoftQConfig
from .loftq_replace import replace_lora_weights_loftq
from .model import LoraModel
from .param_wrapper import ParamWrapper
from .spec import SPEC

__all__ = ["LoraConfig", "LoraRuntimeConfig", "LoraModel", "convert_to_lora", "save_as_lora",
           "hotswap_adapter", "hotswap_adapter_from_state_dict", "prepare_model_for_compiled_hotswap",
           "check_hotswap_configs_compatible", "ParamWrapper", "LoftQConfig", "replace_lora_weights_loftq",
           "CordaConfig", "preprocess_corda", "EvaConfig", "get_eva_state_dict", "initialize_lora_eva_weights"]
