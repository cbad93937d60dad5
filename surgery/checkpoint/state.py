"""Select an adapter's tensors from a PeftModel structurally, and load them back with checks."""
from __future__ import annotations

import logging
import warnings
from typing import Optional

import torch
from torch import nn

from ..errors import CheckpointError, PeftWarning
from ..progress import bar
from ..methods.registry import get_method
from ..rewrite.modules_to_save import ModulesToSaveWrapper
from ..rewrite.trainable import adapter_layers
from . import embeddings
from .keys import SAVED_COPY, to_checkpoint_key

logger = logging.getLogger(__name__)
PROGRESS_MIN_TENSORS = 256  # a progress bar for loads this large (e.g. all-linear on a 70B: 1,120 tensors)


def adapter_model_keys(peft_model: nn.Module, adapter_name: str, bias: str = "none") -> dict[str, torch.Tensor]:
    """{model key: tensor} of everything that belongs to one adapter: its layers' containers, modules_to_save
    copies, the state its layers share (kept on the tuner), and trained biases ("all" or "<method>_only")."""
    out: dict[str, torch.Tensor] = {}
    bias = bias or "none"
    prefix = "base_model.model."
    shared = getattr(peft_model.base_model, "shared_tensors", None)
    for key, tensor in (shared(adapter_name) if shared is not None else {}).items():
        out[f"base_model.{key}.{adapter_name}"] = tensor
    for fqn, layer in adapter_layers(peft_model.base_model.model):
        if isinstance(layer, ModulesToSaveWrapper):
            if adapter_name in layer.modules_to_save:
                for k, v in layer.modules_to_save[adapter_name].state_dict().items():
                    out[f"{prefix}{fqn}.{SAVED_COPY}.{adapter_name}.{k}"] = v
            continue
        for container, holder in layer.adapter_containers():
            if adapter_name not in holder:
                continue
            item = holder[adapter_name]
            if isinstance(item, torch.Tensor):   # a Parameter, or a buffer (saved unless registered non-persistent)
                if adapter_name not in getattr(holder, "_non_persistent_buffers_set", ()):
                    out[f"{prefix}{fqn}.{container}.{adapter_name}"] = item
            else:
                for k, v in item.state_dict().items():
                    out[f"{prefix}{fqn}.{container}.{adapter_name}.{k}"] = v
        if bias.endswith("_only") and getattr(layer.get_base_layer(), "bias", None) is not None:
            out[f"{prefix}{fqn}.base_layer.bias"] = layer.get_base_layer().bias
    if bias == "all":
        for k, v in peft_model.state_dict().items():
            if k.endswith(".bias") and not _other_adapter_key(k, adapter_name):
                out.setdefault(k, v)
    return out


def _other_adapter_key(key: str, adapter_name: str) -> bool:
    return f".{SAVED_COPY}." in key and f".{SAVED_COPY}.{adapter_name}." not in key


class _InjectedView:
    """A model given adapters by inject_adapter_in_model, seen as a PeftModel for its state dict: PEFT keys
    such a model's checkpoint entries by their plain paths (no "base_model.model." in front)."""

    PREFIX = "base_model.model."

    def __init__(self, model: nn.Module):
        self.base_model = _TunerView(model)
        self.peft_config = model.peft_config
        self._modules: dict = {}

    def get_base_model(self) -> nn.Module:
        return self.base_model.model

    def state_dict(self) -> dict:
        return {self.PREFIX + k: v for k, v in self.base_model.model.state_dict().items()}


class _TunerView:
    def __init__(self, model: nn.Module):
        self.model = model


def _as_peft_model(model):
    """(model as a PeftModel view, key prefix to strip or add): injected models have plain keys."""
    if isinstance(model, _InjectedView) or (hasattr(model, "plans") and callable(getattr(model, "get_base_model",
                                                                                           None))):
        return model, ""
    if not isinstance(getattr(model, "peft_config", None), dict):
        raise CheckpointError(f"{type(model).__name__} has no adapters: pass a PeftModel or a model given adapters "
                              f"by inject_adapter_in_model")
    return _InjectedView(model), _InjectedView.PREFIX


def get_peft_model_state_dict(model, state_dict: Optional[dict] = None, adapter_name: str = "default",
                              unwrap_compiled: bool = False, save_embedding_layers="auto") -> dict:
    """PEFT's function: the adapter's tensors under checkpoint keys (adapter name removed); with the embedding
    layers' full weights when save_embedding_layers says so (see embeddings.py for "auto")."""
    model = getattr(model, "_orig_mod", model) if unwrap_compiled else model
    model, plain = _as_peft_model(model)
    if plain:
        state_dict = None if state_dict is None else {plain + k: v for k, v in state_dict.items()}
        full = get_peft_model_state_dict(model, state_dict, adapter_name, save_embedding_layers=False)
        return {k.removeprefix(plain): v for k, v in full.items()}
    config = model.peft_config[adapter_name]
    collapsed = get_method(config.peft_type).collapsed_keys
    entries = _method_entries(model, adapter_name)
    if entries is not None:
        return {key: saved for key, (saved, _) in entries.items()}
    selected = adapter_model_keys(model, adapter_name, getattr(config, "bias", "none"))
    save, targeted = embeddings.resolve(model, config, save_embedding_layers)
    if save:
        for key, tensor in embeddings.embedding_tensors(model, targeted).items():
            selected.setdefault(key, tensor)
    if state_dict is not None:
        selected = {k: state_dict[k] for k in selected if k in state_dict}
    out = {to_checkpoint_key(k, adapter_name, collapsed): v for k, v in selected.items()}
    if getattr(config, "bias", "none") == "all":   # PEFT also writes a copy's bias as <path>.modules_to_save.bias
        marker = f".{SAVED_COPY}.{adapter_name}."
        out.update({k.replace(marker, f".{SAVED_COPY}.", 1): v for k, v in selected.items()
                    if marker in k and k.endswith(".bias")})
    return out


def set_peft_model_state_dict(model, peft_model_state_dict: dict, adapter_name: str = "default",
                              ignore_mismatched_sizes: bool = False, low_cpu_mem_usage: bool = False):
    """Load checkpoint tensors into adapter `adapter_name`; every key and shape is checked first.

    A missing key, or a shape that does not fit, raises CheckpointError naming the module and both shapes;
    nothing is copied unless everything fits. Keys the model has no place for are skipped with a warning and
    returned as unexpected_keys (as PEFT).
    """
    model, plain = _as_peft_model(model)
    if plain:
        peft_model_state_dict = {k if k.startswith(plain) else plain + k: v for k, v in peft_model_state_dict.items()}
    config = model.peft_config[adapter_name]
    entries = _method_entries(model, adapter_name)
    if entries is not None:
        targets = {key: target for key, (_, target) in entries.items()}
        by_ckpt = {key: key for key in targets}
    else:
        collapsed = get_method(config.peft_type).collapsed_keys
        targets = adapter_model_keys(model, adapter_name, getattr(config, "bias", "none"))
        by_ckpt = {to_checkpoint_key(k, adapter_name, collapsed): k for k in targets}
    peft_model_state_dict = {k: v for k, v in peft_model_state_dict.items()
                             if k in by_ckpt or not _peft_duplicate(k, peft_model_state_dict)}
    peft_model_state_dict = _without_unsaved_shared(model, adapter_name, peft_model_state_dict)
    extra = _base_layer_weights(model, peft_model_state_dict, by_ckpt)
    extra.update(embeddings.loadable_embedding_keys(model, peft_model_state_dict, by_ckpt))
    for key, weight in extra.items():
        targets[key], by_ckpt[key] = weight, key
    missing = [k for k in by_ckpt if k not in peft_model_state_dict and not k.endswith(".bias")]
    unexpected = [k for k in peft_model_state_dict if k not in by_ckpt]
    if unexpected:   # as PEFT (a non-strict load): a key naming a tensor of the model loads into it, e.g. the base
        present = model.state_dict(keep_vars=True)   # biases an adapter trained with bias="all" saved
        for key in [k for k in unexpected if k in present]:
            targets[key], by_ckpt[key] = present[key], key
        unexpected = [k for k in unexpected if k not in by_ckpt]
    if unexpected:   # as PEFT: loaded around, reported (a missing key stays an error: it would train from noise)
        warnings.warn(f"the checkpoint has {len(unexpected)} key(s) the model has no place for, e.g. "
                      f"{unexpected[0]!r}; they are not loaded (was it saved for another base model or config?)",
                      PeftWarning, stacklevel=2)
        peft_model_state_dict = {k: v for k, v in peft_model_state_dict.items() if k in by_ckpt}
    if missing:
        raise CheckpointError(f"the checkpoint lacks {len(missing)} adapter key(s) the config asks for, e.g. "
                              f"{missing[0]!r}")
    for ckpt_key, tensor in peft_model_state_dict.items():
        target = targets[by_ckpt[ckpt_key]]
        if not isinstance(tensor, torch.Tensor) or (target.is_floating_point() and not tensor.is_floating_point()):
            kind = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(f"{ckpt_key} holds {kind}; the model expects a floating-point tensor "
                                  f"({target.dtype})")
        if tuple(tensor.shape) != tuple(target.shape):
            module = ckpt_key.removeprefix("base_model.model.")
            raise CheckpointError(f"shape mismatch at {module}: checkpoint {tuple(tensor.shape)} vs model "
                                  f"{tuple(target.shape)}; the adapter was saved for a different base model "
                                  f"(architecture or hidden size) or rank")
    with torch.no_grad():
        for ckpt_key, tensor in bar(list(peft_model_state_dict.items()), desc=f"loading adapter {adapter_name}",
                                    min_items=PROGRESS_MIN_TENSORS):
            target = targets[by_ckpt[ckpt_key]]
            if target.device.type == "meta":   # an adapter injected with low_cpu_mem_usage: the tensor is assigned
                _assign(model, by_ckpt[ckpt_key], tensor.to(dtype=target.dtype))
                continue
            target.copy_(tensor.to(dtype=target.dtype))
    return _LoadResult([], [k.removeprefix(plain) for k in unexpected])


def _assign(model, key: str, value: torch.Tensor) -> None:
    """Replace the meta-device tensor at model key `key` by `value` (a new Parameter, requires_grad kept)."""
    if isinstance(model, _InjectedView):
        root, key = model.base_model.model, key.removeprefix(_InjectedView.PREFIX)
    else:
        root = model
    path, _, name = key.rpartition(".")
    module = root.get_submodule(path)
    old = module._parameters.get(name)
    if old is None:
        raise CheckpointError(f"{key} lives on the meta device and is not a parameter; materialise the model first")
    module._parameters[name] = nn.Parameter(value.clone(), requires_grad=old.requires_grad)


def _method_entries(model, adapter_name: str) -> Optional[dict]:
    """The checkpoint entries of a method whose state is injected, not on layers ({key: (tensor to save, tensor
    to load into)}, from its InjectedState), else None."""
    spec = get_method(model.peft_config[adapter_name].peft_type)
    if spec.injector is None:
        return None
    return model._modules[spec.injector.attribute].checkpoint_entries(adapter_name)


def _base_layer_weights(model, state: dict, known: dict) -> dict:
    """PEFT also saves the full weight of an adapter-wrapped embedding or lm_head (`<path>.base_layer.weight`, for a
    resized vocabulary); such keys load into that layer's base weight, as in PEFT."""
    out, prefix, suffix = {}, "base_model.model.", ".base_layer.weight"
    for key in state:
        if key in known or not (key.startswith(prefix) and key.endswith(suffix)):
            continue
        try:
            layer = model.base_model.model.get_submodule(key[len(prefix):-len(suffix)])
        except AttributeError:
            continue
        if getattr(layer, "_surgery_adapter_layer", False) and not getattr(layer, "_surgery_modules_to_save", False):
            out[key] = layer.get_base_layer().weight
    return out


def _without_unsaved_shared(model, adapter_name: str, state: dict) -> dict:
    """Shared state the adapter does not save (its config says its layers rebuild it) but that the
    checkpoint holds anyway: skipped with a warning, as PEFT does, instead of refused as unexpected."""
    tuner = getattr(model, "base_model", None)
    kept = getattr(tuner, "shared_tensors", None)
    if kept is None:
        return state
    unsaved = {f"base_model.{name}" for name in kept(adapter_name, persistent_only=False)} - {
        f"base_model.{name}" for name in kept(adapter_name)}
    skipped = sorted(k for k in state if k in unsaved)
    if skipped:
        logger.warning("the checkpoint holds %s, which this adapter's config does not save (its layers rebuild "
                       "it); ignoring the saved copy, as PEFT does", ", ".join(skipped))
    return {k: v for k, v in state.items() if k not in unsaved}


def _peft_duplicate(key: str, state: dict) -> bool:
    """PEFT with bias="all" also writes a modules_to_save copy's bias as `<path>.modules_to_save.bias`, a
    duplicate of `<path>.bias`; such a key is accepted and skipped."""
    marker = f".{SAVED_COPY}."
    return marker in key and key.replace(marker, ".", 1) in state


class _LoadResult(tuple):
    def __new__(cls, missing, unexpected):
        obj = super().__new__(cls, (missing, unexpected))
        obj.missing_keys, obj.unexpected_keys = missing, unexpected
        return obj
