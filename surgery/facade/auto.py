"""AutoPeftModel and AutoPeftModelFor<Task>: load the base model an adapter names, then the adapter.

`from_pretrained(adapter)` reads adapter_config.json (a directory or a Hub id), builds the base model from its
`base_model_name_or_path` at its `revision` with the task's transformers auto class (the task table's
`auto_class`; plain AutoPeftModel uses the class the saving PeftModel recorded in `auto_mapping`, imported only
from an allowlist of packages), grows the input embeddings when a tokenizer saved with the adapter has more
tokens, and loads the adapter with the task's PeftModel class. One row of surgery/tasks.py per class.
"""
from __future__ import annotations

import importlib
import os
from typing import Optional

from ..checkpoint.hub import hub_file_exists
from ..config.base import PeftConfig
from ..tasks import TASKS
from .peft_model import PeftModel
from .tasks import MODEL_TYPE_TO_PEFT_MODEL_MAPPING

TOKENIZER_CONFIG_NAME = "tokenizer_config.json"


def get_default_import_allowlist() -> list[str]:
    """Packages whose classes an adapter's `auto_mapping` may name (importing runs the package's code)."""
    return ["diffusers", "lerobot", "megatron-core", "transformers"]


def check_import_allowlist(allowlist: list[str], parent_name: str) -> bool:
    return parent_name in allowlist or any(parent_name.startswith(f"{allowed}.") for allowed in allowlist)


class _BaseAutoPeftModel:
    _target_class: Optional[str] = None        # the transformers auto class, by name (imported on use)
    _target_peft_class: type = PeftModel

    def __init__(self, *args, **kwargs):
        name = type(self).__name__
        raise EnvironmentError(f"{name} is designed to be instantiated using the "   # noqa: UP024 (PEFT's type)
                               f"`{name}.from_pretrained(pretrained_model_name_or_path)` or "
                               f"`{name}.from_config(config)` methods.")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, adapter_name: str = "default", is_trainable: bool = False,
                        config: Optional[PeftConfig] = None, revision: Optional[str] = None,
                        import_allowlist: Optional[list[str]] = None, **kwargs):
        """PeftModel.from_pretrained's parameters; kwargs also reach the base model's from_pretrained
        (torch_dtype, device_map, quantization_config, ...) and the Hub calls (token, cache_dir, subfolder)."""
        peft_config = PeftConfig.from_pretrained(pretrained_model_name_or_path, revision=revision, **kwargs)
        target_class = cls._base_class(peft_config, import_allowlist or get_default_import_allowlist())
        if peft_config.base_model_name_or_path is None:
            raise ValueError(f"{pretrained_model_name_or_path}: adapter_config.json names no base model "
                             f"(base_model_name_or_path is null); load the base yourself and use "
                             f"{cls._target_peft_class.__name__}.from_pretrained(model, adapter)")
        base_kwargs = {k: v for k, v in kwargs.items() if k != "subfolder"}   # the adapter's subfolder, not the base's
        base_model = target_class.from_pretrained(peft_config.base_model_name_or_path,
                                                  revision=peft_config.revision, **base_kwargs)
        _grow_embeddings_for_tokenizer(base_model, pretrained_model_name_or_path, revision, kwargs)
        return cls._target_peft_class.from_pretrained(base_model, pretrained_model_name_or_path,
                                                      adapter_name=adapter_name, is_trainable=is_trainable,
                                                      config=config, revision=revision, **kwargs)

    @classmethod
    def _base_class(cls, peft_config, allowlist: list[str]) -> type:
        task_type = getattr(peft_config, "task_type", None)
        if cls._target_class is None and task_type is not None:
            raise ValueError("Cannot use `AutoPeftModel` with a task type, please use a specific class for your task "
                             f"type. (e.g. `AutoPeftModelForCausalLM` for `task_type='CAUSAL_LM'`; this adapter "
                             f"has task_type={_value(task_type)!r}: use "
                             f"Auto{MODEL_TYPE_TO_PEFT_MODEL_MAPPING[task_type].__name__})")
        if task_type is not None:
            expected = MODEL_TYPE_TO_PEFT_MODEL_MAPPING[task_type]
            if cls._target_peft_class.__name__ != expected.__name__:
                raise ValueError(f"Expected target PEFT class: {expected.__name__}, but you have asked for: "
                                 f"{cls._target_peft_class.__name__} make sure that you are loading the correct "
                                 f"model for your task type. (use Auto{expected.__name__})")
            return getattr(importlib.import_module("transformers"), cls._target_class)
        mapping = getattr(peft_config, "auto_mapping", None)
        if mapping is None:
            raise ValueError("Cannot infer the auto class from the config, please make sure that you are loading the "
                             "correct model for your task type. (the adapter has neither task_type nor auto_mapping)")
        library = mapping["parent_library"]
        if not check_import_allowlist(allowlist, library):
            raise ValueError(f"The auto mapping wants to import '{library}' which is not in the import allowlist. If "
                             f"you are sure that importing this library is safe, specify "
                             f"`import_allowlist=['{library}']` in `from_pretrained()`.")
        return getattr(importlib.import_module(library), mapping["base_model_class"])


def _value(task_type) -> str:
    return getattr(task_type, "value", task_type)


def _grow_embeddings_for_tokenizer(base_model, adapter_path, revision, kwargs) -> None:
    """As PEFT: a tokenizer saved beside the adapter with more tokens than the base's embedding rows means the
    embeddings were resized for training; resize the base the same way before the adapter loads."""
    token = kwargs.get("token", kwargs.get("use_auth_token"))
    subfolder = kwargs.get("subfolder")
    local = os.path.join(adapter_path, subfolder) if subfolder else adapter_path
    if os.path.exists(os.path.join(local, TOKENIZER_CONFIG_NAME)):
        source, hub = local, {}
    elif not os.path.isdir(adapter_path) and hub_file_exists(
            adapter_path, TOKENIZER_CONFIG_NAME if not subfolder else f"{subfolder}/{TOKENIZER_CONFIG_NAME}",
            revision=revision, token=token, cache_dir=kwargs.get("cache_dir"), repo_type=kwargs.get("repo_type")):
        source, hub = adapter_path, {"revision": revision, "token": token, "subfolder": subfolder,
                                     "cache_dir": kwargs.get("cache_dir")}
    else:
        return
    if not hasattr(base_model, "get_input_embeddings"):
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=kwargs.get("trust_remote_code", False),
                                              **{k: v for k, v in hub.items() if v is not None})
    if len(tokenizer) > base_model.get_input_embeddings().weight.shape[0]:
        base_model.resize_token_embeddings(len(tokenizer))


def _auto_class(task) -> type:
    peft_class = MODEL_TYPE_TO_PEFT_MODEL_MAPPING[task.task_type]
    return type(f"Auto{peft_class.__name__}", (_BaseAutoPeftModel,),
                {"__module__": __name__, "_target_class": task.auto_class, "_target_peft_class": peft_class,
                 "__doc__": f"Loads the base with transformers' {task.auto_class}, then the adapter as "
                            f"{peft_class.__name__}."})


class AutoPeftModel(_BaseAutoPeftModel):
    """Loads an adapter saved without a task type: the base class is the one recorded in its auto_mapping."""


_AUTO = {task.task_type: _auto_class(task) for task in TASKS.values()}
AUTO_PEFT_MODEL_CLASSES = {cls.__name__: cls for cls in _AUTO.values()}
globals().update(AUTO_PEFT_MODEL_CLASSES)

__all__ = ["AutoPeftModel", *AUTO_PEFT_MODEL_CLASSES, "check_import_allowlist", "get_default_import_allowlist"]
