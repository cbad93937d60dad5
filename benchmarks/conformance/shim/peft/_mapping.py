"""PEFT module paths and names -> surgery's equivalents ("module:attribute"), for the shim's sub-modules.

Top-level `peft.X` is `surgery.X` whenever surgery exports X. The table below maps the few internal modules
PEFT's tests import. A name found nowhere resolves to a stand-in that raises on use.
"""
from __future__ import annotations

import importlib

from ._placeholders import stand_in
from ._scope import is_out_of_scope

_LORA = {
    "LoraLayer": "surgery.methods.lora.layer:LoraLayer",
    "Linear": "surgery.methods.lora.linear:Linear",
    "Conv1d": "surgery.methods.lora.conv:Conv",
    "Conv2d": "surgery.methods.lora.conv:Conv",
    "Conv3d": "surgery.methods.lora.conv:Conv",
    "Embedding": "surgery.methods.lora.embedding:Embedding",
    "LoraModel": "surgery:LoraModel",
    "LoraConfig": "surgery:LoraConfig",
    "ParamWrapper": "surgery.methods.lora.param_wrapper:ParamWrapper",
}

MAPPED: dict[str, dict[str, str]] = {
    "peft.tuners": {"LoraModel": "surgery:LoraModel", "LoraConfig": "surgery:LoraConfig"},
    "peft.tuners.lora": _LORA,
    "peft.tuners.lora.layer": _LORA,
    "peft.tuners.lora.model": {
        "LoraModel": "surgery:LoraModel",
        "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING": "surgery.methods.default_targets:LORA_FAMILY",
    },
    "peft.tuners.lora.config": {"LoraConfig": "surgery:LoraConfig", "LoftQConfig": "surgery:LoftQConfig",
                                "CordaConfig": "surgery:CordaConfig", "EvaConfig": "surgery:EvaConfig"},
    "peft.tuners.lora.corda": {"preprocess_corda": "surgery:preprocess_corda"},
    "peft.tuners.lora.eva": {"get_eva_state_dict": "surgery:get_eva_state_dict",
                             "initialize_lora_eva_weights": "surgery:initialize_lora_eva_weights"},
    "peft.tuners.tuners_utils": {
        "BaseTunerLayer": "surgery.methods.base_layer:AdapterLayer",
        "BaseTuner": "surgery.facade.tuner:TunerModel",
        "check_target_module_exists": "peft._glue:check_target_module_exists",
    },
    "peft.mapping": {name: f"surgery:{name}" for name in (
        "PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING",
        "get_peft_config", "inject_adapter_in_model")},
    "peft.mapping_func": {"get_peft_model": "surgery:get_peft_model"},
    # PEFT's per-adapter buffer container; surgery's is the tuner's holder of per-adapter shared tensors
    "peft.tuners._buffer_dict": {"BufferDict": "surgery.facade.buffers:SharedBuffers"},
    "peft.utils": {
        "ModulesToSaveWrapper": "surgery.rewrite.modules_to_save:ModulesToSaveWrapper",
        # PEFT's base of its auxiliary wrappers; surgery's one auxiliary wrapper is the modules_to_save copy
        "AuxiliaryTrainingWrapper": "surgery.rewrite.modules_to_save:ModulesToSaveWrapper",
        "TrainableTokensWrapper": "surgery.methods.trainable_tokens.wrapper:TrainableTokensWrapper",
        "get_peft_model_state_dict": "surgery:get_peft_model_state_dict",
        "set_peft_model_state_dict": "surgery:set_peft_model_state_dict",
        "INCLUDE_LINEAR_LAYERS_SHORTHAND": "peft._glue:INCLUDE_LINEAR_LAYERS_SHORTHAND",
        "_get_submodules": "peft._glue:get_submodules",
        "infer_device": "peft._glue:infer_device",
        "PeftType": "surgery:PeftType",
        "prepare_model_for_kbit_training": "surgery:prepare_model_for_kbit_training",
        "TaskType": "surgery:TaskType",
    },
    "peft.utils.other": {
        "prepare_model_for_kbit_training": "surgery:prepare_model_for_kbit_training",
        "ModulesToSaveWrapper": "surgery.rewrite.modules_to_save:ModulesToSaveWrapper",
        "AuxiliaryTrainingWrapper": "surgery.rewrite.modules_to_save:ModulesToSaveWrapper",
        "TrainableTokensWrapper": "surgery.methods.trainable_tokens.wrapper:TrainableTokensWrapper",
        "_get_module_names_tied_with_embedding": "surgery.graph.embedding_ties:tied_with_input_embedding",
    },
    "peft.tuners.trainable_tokens.layer": {
        "TrainableTokensLayer": "surgery.methods.trainable_tokens.layer:TrainableTokensLayer"},
    "peft.utils.constants": {
        "DUMMY_MODEL_CONFIG": "peft._glue:DUMMY_MODEL_CONFIG",
    },
    "peft.import_utils": {
        "is_transformers_ge_v5": "peft._glue:always_true",
        "is_transformers_ge_v5_1_0": "peft._glue:always_true",
        "is_transformers_ge_v5_6_0": "peft._glue:always_true",
        **{f"is_{lib}_available": "peft._glue:always_false"
           for lib in ("aqlm", "eetq", "gptqmodel", "hqq", "optimum", "torchao", "bnb", "bnb_4bit", "auto_awq",
                       "xpu", "inc", "diffusers")},
    },
    "peft.config": {"PeftConfig": "surgery:PeftConfig", "PromptLearningConfig": "surgery:PromptLearningConfig"},
    "peft.peft_model": {"PeftModel": "surgery:PeftModel"},
    "peft.functional": {name: f"surgery.functional:{name}" for name in (
        "cast_adapter_dtype", "delete_adapter", "get_peft_model_state_dict", "inject_adapter_in_model",
        "set_adapter", "set_peft_model_state_dict", "set_requires_grad")},
    "peft.optimizers": {"create_loraplus_optimizer": "surgery.optimizers:create_loraplus_optimizer"},
    "peft.helpers": {name: f"surgery.helpers:{name}" for name in (
        "DoraCaching", "check_if_peft_model", "disable_input_dtype_casting", "rescale_adapter_scale", "update_forward_signature",
        "update_generate_signature", "update_signature")},
    "peft.auto": {name: f"surgery:{name}" for name in (
        "AutoPeftModel", "AutoPeftModelForCausalLM", "AutoPeftModelForFeatureExtraction",
        "AutoPeftModelForQuestionAnswering", "AutoPeftModelForSeq2SeqLM", "AutoPeftModelForSequenceClassification",
        "AutoPeftModelForTokenClassification")},
    "peft.utils.save_and_load": {name: f"surgery:{name}" for name in (
        "get_peft_model_state_dict", "set_peft_model_state_dict", "load_peft_weights")},
    "peft.utils.hotswap": {name: f"surgery:{name}" for name in (
        "hotswap_adapter", "hotswap_adapter_from_state_dict", "prepare_model_for_compiled_hotswap",
        "check_hotswap_configs_compatible")},
}

# Attributes of a shim module that are its sub-modules (`from peft.tuners import lora`).
SUBMODULES = {"tuners", "utils", "lora", "layer", "model", "config", "tuners_utils", "other", "constants",
              "import_utils", "mapping", "peft_model", "variants", "hotswap", "quantization_utils", "functional",
              "optimizers", "helpers", "auto", "save_and_load"}


def _load(target: str):
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def resolve(module: str, name: str):
    """The object `from <module> import <name>` gives under the shim."""
    import surgery

    target = MAPPED.get(module, {}).get(name)
    if target is not None:
        return _load(target)
    if name in SUBMODULES:
        return importlib.import_module(f"{module}.{name}")
    if module == "peft" and hasattr(surgery, name) and not name.startswith("_"):
        return getattr(surgery, name)
    return stand_in(module, name, out_of_scope=is_out_of_scope(module, name))
