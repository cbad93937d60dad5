"""save_pretrained / from_pretrained / load_adapter / model card for PeftModel."""
from __future__ import annotations

import os
from typing import Optional

from ..version import __version__
from ..checkpoint.card import update_model_card
from ..checkpoint.gather import full_tensors
from ..checkpoint.push import push_folder
from ..checkpoint.io import (adapter_dir, read_config_dict, read_tensors, resolve_adapter_files,
                             saved_config_dict, write_adapter)
from ..checkpoint.state import get_peft_model_state_dict, set_peft_model_state_dict
from ..config.loading import config_from_dict
from ..errors import AdapterNameError, ConfigError
from ..methods.registry import get_method
from ..naming import validate_adapter_name

_HUB_KEYS = ("revision", "token", "cache_dir", "subfolder", "force_download", "local_files_only")


class PersistenceMixin:
    def save_pretrained(self, save_directory: str, safe_serialization: bool = True,
                        selected_adapters: Optional[list[str]] = None, save_embedding_layers="auto",
                        is_main_process: bool = True, path_initial_model_for_weight_conversion=None,
                        **kwargs) -> None:
        """Write each adapter in PEFT's format (non-default adapters in subfolders); atomic per file.

        Under torch.distributed call it on every rank with is_main_process=(rank == 0): FSDP2-sharded adapters
        are gathered collectively, then only the main process writes. `state_dict=` (PEFT's keyword) takes the
        adapter tensors from that full-model state dict instead of the live parameters.
        path_initial_model_for_weight_conversion: where the adapter was saved right after initialisation, for a
        method whose init rewrote the base weights; each adapter is saved as one for the original base instead."""
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory {save_directory!r} is a file; pass a directory")
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        for name in names:
            validate_adapter_name(name)
            if name not in self.peft_config:
                raise AdapterNameError(f"selected_adapters: {name!r} is not an adapter of this model; "
                                       f"adapters: {list(self.peft_config)}")
        # Every process collects (sharded FSDP2 parameters are gathered: a collective); only the main one writes.
        state_dict = kwargs.get("state_dict")
        collected = {name: full_tensors(get_peft_model_state_dict(self, state_dict=state_dict, adapter_name=name,
                                                                  save_embedding_layers=save_embedding_layers))
                     for name in names}
        if not is_main_process:
            return
        configs = {name: self.peft_config[name] for name in names}
        if path_initial_model_for_weight_conversion is not None:
            for name in names:
                configs[name], collected[name] = self._initial_model_conversion(
                    name, collected[name], path_initial_model_for_weight_conversion, state_dict)
        for name in names:
            config = configs[name]
            directory = adapter_dir(save_directory, name)
            tensors = collected[name]
            base = config.base_model_name_or_path
            data = saved_config_dict(config, base, config.revision)
            if config.task_type is None:   # as PEFT: AutoPeftModel rebuilds the base from the class it names
                base_class = type(self.get_base_model())
                data["auto_mapping"] = {"base_model_class": base_class.__name__,
                                        "parent_library": base_class.__module__}
            write_adapter(directory, data, tensors, safe_serialization)
            if name == "default" or not os.path.exists(os.path.join(save_directory, "README.md")):
                self.create_or_update_model_card(str(directory))

    def _initial_model_conversion(self, name: str, tensors: dict, path, state_dict) -> tuple:
        """(config, tensors) of adapter `name` as an adapter for the original base (the method's conversion)."""
        convert = get_method(self.peft_config[name].peft_type).initial_model_conversion
        if convert is None:   # PEFT's words
            raise ValueError(f"Passing `path_initial_model_for_weight_conversion` to `save_pretrained` is not "
                             f"supported for {type(self.base_model).__name__}.")
        return convert(self, name, tensors, path, state_dict)

    def push_to_hub(self, repo_id: str, *, commit_message: Optional[str] = None,
                    commit_description: Optional[str] = None, private: Optional[bool] = None, token=None,
                    revision: Optional[str] = None, create_pr: bool = False, max_shard_size="50GB",
                    tags: Optional[list[str]] = None, safe_serialization: bool = True, **save_kwargs):
        """Upload the adapters as save_pretrained writes them (adapter files and card only, never the base
        model's weights) to the Hub repo `repo_id`, created if needed; returns huggingface_hub's CommitInfo.
        save_kwargs (selected_adapters, save_embedding_layers, ...) go to save_pretrained; max_shard_size is
        accepted for transformers' signature (an adapter is one file)."""
        return push_folder(lambda folder: self.save_pretrained(folder, safe_serialization=safe_serialization,
                                                               **save_kwargs),
                           repo_id, default_message="Upload model", commit_message=commit_message,
                           commit_description=commit_description, private=private, token=token, revision=revision,
                           create_pr=create_pr, tags=tags)

    def create_or_update_model_card(self, output_dir: str) -> None:
        config = self.active_peft_config
        quant = getattr(getattr(self.get_base_model(), "config", None), "quantization_config", None)
        quant = quant.to_dict() if hasattr(quant, "to_dict") else quant
        # as PEFT: the card names the base model its transformers config says; a custom model has none to name
        model_config = getattr(self.get_base_model(), "config", None)
        base = getattr(model_config, "_name_or_path", None) if model_config is not None else None
        update_model_card(output_dir, base_model=base or None, method=config.peft_type.value,
                          version=__version__, quantization=quant)

    @classmethod
    def from_pretrained(cls, model, model_id, adapter_name: str = "default", is_trainable: bool = False,
                        config=None, autocast_adapter_dtype: bool = True, ephemeral_gpu_offload: bool = False,
                        low_cpu_mem_usage: bool = False, **kwargs):
        """Load an adapter (local directory or Hub id) onto `model` and return the PeftModel."""
        validate_adapter_name(adapter_name)
        hub = {k: kwargs.pop(k) for k in _HUB_KEYS if k in kwargs}
        directory = resolve_adapter_files(model_id, **hub)
        given = config
        if config is None:
            data = read_config_dict(directory)
            data.update({k: v for k, v in kwargs.items() if k in data})  # PEFT: kwargs override config keys
            config = config_from_dict(data, strict=False, where=str(directory / "adapter_config.json"))
        config = config.copy()
        _check_trainable(config, is_trainable)
        config.inference_mode = not is_trainable
        target_cls = cls.task_classes.get(config.task_type, cls) if cls.__name__ == "PeftModel" else cls
        tensors = read_tensors(directory)  # read and validated before the model changes
        peft_model = target_cls(model, config, adapter_name, _strict_targets=False,
                                autocast_adapter_dtype=autocast_adapter_dtype, _checkpoint_shapes=_shapes(tensors))
        try:
            set_peft_model_state_dict(peft_model, tensors, adapter_name)
        except Exception:
            peft_model.unload()  # put the original modules back: the user's model is as it was
            raise
        if given is not None:   # as PEFT: the config passed in is the one the model keeps (with what planning
            given.__dict__.update(peft_model.peft_config[adapter_name].__dict__)   # resolved in it)
            peft_model.peft_config[adapter_name] = given
        if not is_trainable:
            peft_model.eval()
        return peft_model

    def load_adapter(self, model_id, adapter_name: str, is_trainable: bool = False, torch_device=None,
                     autocast_adapter_dtype: bool = True, ephemeral_gpu_offload: bool = False,
                     low_cpu_mem_usage: bool = False, **kwargs):
        """Load another adapter into this model (not activated: call set_adapter)."""
        validate_adapter_name(adapter_name)
        hub = {k: kwargs.pop(k) for k in _HUB_KEYS if k in kwargs}
        directory = resolve_adapter_files(model_id, **hub)
        config = config_from_dict(read_config_dict(directory), strict=False)
        _check_trainable(config, is_trainable)
        config.inference_mode = not is_trainable
        tensors = read_tensors(directory)  # read and validated before the model changes
        self._add(adapter_name, config, activate=False, strict=False, autocast_adapter_dtype=autocast_adapter_dtype,
                  checkpoint_shapes=_shapes(tensors))
        try:
            result = set_peft_model_state_dict(self, tensors, adapter_name)
        except Exception:
            self.delete_adapter(adapter_name)
            raise
        if is_trainable and not self._injected_states():   # as PEFT: trainable though not active yet
            self.base_model.set_requires_grad(adapter_name, True)
        return result   # (missing_keys, unexpected_keys), as PEFT


def _shapes(tensors: dict) -> dict:
    return {key: tuple(tensor.shape) for key, tensor in tensors.items()}


def _check_trainable(config, is_trainable: bool) -> None:
    """Some methods save what cannot be trained further (their spec's frozen_on_load says why)."""
    reason = get_method(config.peft_type).frozen_on_load
    if reason and is_trainable:
        raise ConfigError(f"{config.peft_type.value}: a saved adapter cannot be loaded with is_trainable=True "
                          f"({reason}); train a new adapter with get_peft_model instead")
