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
}

MAPPED: dict[str, dict[str, str]] = {
    "peft.tuners": {"LoraModel": "surgery:LoraModel", "LoraConfig": "surgery:LoraConfig"},
    "peft.tuners.lora": _LORA,
    "peft.tuners.lora.layer": _LORA,
    "peft.tuners.lora.model": {
        "LoraModel": "surgery:LoraModel",
        "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING": "surgery.methods.default_targets:LORA_FAMILY",
    },
    "peft.tuners.lora.config": {"LoraConfig": "surgery:LoraConfig"},
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
    "peft.tuners._buffer_dict": {"BufferDict": "surgery.facade.tuner:SharedBuffers"},
    "peft.utils": {
        "ModulesToSaveWrapper": "surgery.rewrite.modules_to_save:ModulesToSaveWrapper",
        # PEFT's base of its auxiliary wrappers; surgery's one auxiliary wrapper is the modules_to_save copy
        "AuxiliaryTrainingWrapper": "surgery.rewrite.modules_to_save:ModulesToSaveWrapper",
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
    },
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
}

# Attributes of a shim module that are its sub-modules (`from peft.tuners import lora`).
SUBMODULES = {"tuners", "utils", "lora", "layer", "model", "config", "tuners_utils", "other", "constants",
              "import_utils", "mapping", "peft_model", "variants", "hotswap", "quantization_utils"}


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
