"""replace_lora_weights_loftq: LoftQ's factors for a PeftModel whose base is bitsandbytes 4-bit already (PEFT's
function, same arguments and errors). Per LoRA Linear4bit layer, with Q its stored 4-bit weight and W the
original weight, read from the model's safetensors file (lazily, one tensor at a time):

    W - dequant(Q) = U S V^T,   B = U_r sqrt(S_r),   A = sqrt(S_r) V_r^T      (Q itself is kept)

so the layer starts at dequant(Q) + s B A, closer to W than the quantized base alone when s = 1. `callback(model,
name)` is asked after each layer; False rolls that layer back (e.g. when the logits got worse). On any error every
layer replaced so far is rolled back too: nothing is left half-done.
"""
from __future__ import annotations

import importlib.util
import json
import os
from typing import Callable, Optional

import torch
from torch import nn

from ...errors import AdapterNameError
from ...quantized.bnb import BNB_4BIT
from .init_svd import set_factors
from .loftq import low_rank_factors
from .quantized import Linear4bit

_PREFIX = "base_model.model."
_FILE = "model.safetensors"


class SafetensorsWeights:
    """Tensors of a (possibly sharded) safetensors checkpoint by name, read one at a time."""

    def __init__(self, peft_model: nn.Module, model_path: Optional[str]):
        path = os.fspath(model_path) if model_path is not None else _local_snapshot(peft_model)
        if not path.endswith(_FILE):
            path = os.path.join(path, _FILE)
        self.path = path
        self.files: dict[str, str] = {}
        if not os.path.exists(path):   # sharded: model.safetensors.index.json maps names to files
            index = os.path.join(os.path.dirname(path), f"{_FILE}.index.json")
            if not os.path.exists(index):
                raise FileNotFoundError(f"Could not find file for {path}, ensure that there is a (sharded) "
                                        f"safetensors file of the model.")
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            self.files = {k: os.path.join(os.path.dirname(path), v) for k, v in weight_map.items()}
        self.base_model_prefix = getattr(peft_model.get_base_model(), "base_model_prefix", None)

    def get_tensor(self, name: str) -> torch.Tensor:
        """The tensor `name`, or `name` without the model's base_model_prefix (checkpoints of the bare model)."""
        from safetensors import safe_open

        candidates = [name]
        if self.base_model_prefix and name.startswith(self.base_model_prefix + "."):
            candidates.append(name[len(self.base_model_prefix) + 1:])
        for key in candidates:
            file = self.files.get(key, self.path if not self.files else None)
            if file is None:
                continue
            with safe_open(file, framework="pt", device="cpu") as f:
                if key in f.keys():
                    return f.get_tensor(key)
        raise KeyError(f"{self.path}: no tensor {' or '.join(map(repr, candidates))}; model_path must be the "
                       f"full-precision checkpoint the quantized model was loaded from")


def _local_snapshot(peft_model: nn.Module) -> str:
    """The model's own checkpoint directory: a local path, or its Hub snapshot already in the cache."""
    try:
        name = peft_model.get_base_model().config._name_or_path
    except AttributeError as exc:
        raise ValueError("The provided model does not appear to be a transformers model or is a local model. In "
                         "this case, you must pass the model_path argument that points to the safetensors "
                         "file.") from exc
    if name and os.path.isdir(name):
        return name
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(name, local_files_only=True)
    except HFValidationError as exc:
        raise ValueError("The provided model does not appear to be a transformers model or is a local model. In "
                         "this case, you must pass the model_path argument that points to the safetensors "
                         "file.") from exc
    except LocalEntryNotFoundError as exc:
        raise ValueError("The model.safetensors file must be present on disk, but it could not be found.") from exc


def loftq_factors(layer: nn.Module, weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of rank `rank` for a LoRA Linear4bit layer whose original full-precision weight is `weight`."""
    dequantized = BNB_4BIT.dequantize(layer.get_base_layer())
    if tuple(weight.shape) != tuple(dequantized.shape):
        raise ValueError(f"{layer._layer_name()}: the checkpoint's weight has shape {tuple(weight.shape)}, the "
                         f"quantized base {tuple(dequantized.shape)}; model_path must be this model's checkpoint")
    lora_B, lora_A = low_rank_factors(weight.to(device=dequantized.device, dtype=torch.float32) - dequantized, rank)
    return lora_A, lora_B


@torch.no_grad()
def replace_lora_weights_loftq(peft_model, model_path: Optional[str] = None, adapter_name: str = "default",
                               callback: Optional[Callable[[nn.Module, str], bool]] = None):
    """Replace the LoRA weights of a bitsandbytes 4-bit model with LoftQ's (see the module docstring).

    model_path: the safetensors file (or its directory) of the original weights; default: the model's own
    checkpoint (its config's _name_or_path, a local directory or a Hub snapshot in the cache)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("bitsandbytes must be installed and the model must be quantized in 4bits.")
    weights = SafetensorsWeights(peft_model, model_path)
    layers = []
    for name, module in peft_model.named_modules():
        if not isinstance(module, Linear4bit):
            continue
        if not name.startswith(_PREFIX):
            raise TypeError("The passed model does not appear to be a valid PeftModel")
        if adapter_name not in module.r:
            raise AdapterNameError(f"adapter_name = {adapter_name!r} is not an adapter of {name}; its adapters: "
                                   f"{list(module.r)}")
        layers.append((name[len(_PREFIX):], module))
    if not layers:
        raise ValueError("No bnb LoRA module found on the model")
    kept = []   # (layer, its factors before): rolled back if anything fails later
    try:
        for name, module in layers:
            lora_A, lora_B = loftq_factors(module, weights.get_tensor(name + ".weight"), module.r[adapter_name])
            before = (module.lora_A[adapter_name].weight.detach().clone(),
                      module.lora_B[adapter_name].weight.detach().clone())
            set_factors(module, adapter_name, lora_A, lora_B)
            if callback is not None and not callback(peft_model, name):
                set_factors(module, adapter_name, *before)
            else:
                kept.append((module, before))
    except BaseException:
        for module, before in kept:
            set_factors(module, adapter_name, *before)
        raise
