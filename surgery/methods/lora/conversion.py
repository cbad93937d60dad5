"""Convert any additive adapter (W' = W + ΔW: LoHa, LoKr, VeRA, FourierFT, LoRA itself) into a LoRA adapter.

Per adapted layer, the truncated SVD of its delta gives the best rank-k approximation (Eckart-Young):

    ΔW = U S V^T  ->  B = U_k S_k,  A = V_k^T      (scaling 1: r = lora_alpha = k)

`rank` is k for every layer (int), or an energy threshold t in (0, 1] (float): per layer the smallest k with
sum_{i<=k} s_i^2 >= t * sum_i s_i^2, recorded in rank_pattern / alpha_pattern. PEFT's convert_to_lora /
save_as_lora (same arguments, config and state-dict keys), so the result loads in PEFT and in surgery.
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from ...checkpoint.io import saved_config_dict, write_adapter
from ...errors import ConfigError
from ...graph.kinds import is_conv1d
from ...progress import bar
from ...rewrite.modules_to_save import ModulesToSaveWrapper
from ..base_layer import AdapterLayer
from ...rewrite.trainable import adapter_layers
from .config import LoraConfig

_PEFT_PREFIX = "base_model.model."


def energy_rank(singular_values: torch.Tensor, threshold: float) -> int:
    """The smallest k whose top-k singular values hold `threshold` of the squared total (PEFT's cut-off)."""
    energy = torch.cumsum(singular_values.square(), dim=0)
    return int(torch.searchsorted(energy, threshold * energy[-1]).item()) + 1


@torch.no_grad()
def lora_factors(layer: nn.Module, rank: Union[int, float], adapter_name: str = "default"):
    """(A, B, k) with s=1 LoRA factors B @ A ≈ the layer's delta for `adapter_name`, in LoRA's layout."""
    delta = layer.get_delta_weight(adapter_name)
    dtype = delta.dtype
    U, S, Vh = torch.linalg.svd(delta.float(), full_matrices=False)   # no SVD in half precision
    k = rank if isinstance(rank, int) else energy_rank(S, rank)
    if k > U.shape[1]:
        raise ConfigError(f"The chosen rank {k} is larger than the weight shape ({U.shape[1]}), please choose a "
                          f"lower rank (convert_to_lora at "
                          f"{getattr(layer, '_surgery_fqn', type(layer).__name__)}; choose rank <= {U.shape[1]})")
    B, A = (U[:, :k] * S[:k]).to(dtype), Vh[:k].to(dtype)
    if is_conv1d(layer.get_base_layer()):   # the delta is in Conv1D's (in, out) layout
        return B.T.contiguous(), A.T.contiguous(), k
    return A.contiguous(), B.contiguous(), k


def _check(model: nn.Module, rank, adapter_name: str):
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise ConfigError(f"convert_to_lora: rank={rank!r} must be an int (the rank) or a float in (0, 1] (the "
                          f"share of singular-value energy to keep)")
    if isinstance(rank, float) and not 0 < rank <= 1:
        raise ValueError(f"If rank is a float, it is interpreted as a threshold. It must be between 0 and 1 but got "
                         f"{rank}.")
    if rank <= 0:
        raise ValueError(f"Passing a rank of {rank} doesn't make sense, please pass a valid value (a positive int).")
    # as PEFT: only tuner layers convert; modules_to_save copies and trainable-token wrappers are auxiliaries
    layers = [(n, m) for n, m in adapter_layers(model) if isinstance(m, AdapterLayer)]
    unsupported = sorted({repr(type(m)) for _, m in layers if not m.supports_lora_conversion(adapter_name)})
    if unsupported:
        raise TypeError(f"Some module types on this model do not support LoRA conversion: {', '.join(unsupported)}.")
    if not layers:
        raise TypeError("Could not detect any layer that supports LoRA conversion.")
    return layers


def supports_lora_conversion(model: nn.Module, adapter_name: str = "default") -> bool:
    """PEFT's PeftModel / tuner call: whether every adapter layer adds a weight delta convert_to_lora can express
    (False for prompt learning, which adds no layers)."""
    config = getattr(model, "peft_config", {}).get(adapter_name) if isinstance(getattr(model, "peft_config", None),
                                                                               dict) else None
    if config is not None and config.is_prompt_learning:
        return False
    layers = [m for _, m in adapter_layers(model) if isinstance(m, AdapterLayer)]
    return bool(layers) and all(m.supports_lora_conversion(adapter_name) for m in layers)


def convert_to_lora(model: nn.Module, rank: Union[int, float], adapter_name: str = "default",
                    progressbar: bool = False, compile_kwargs: Optional[dict] = None):
    """(LoraConfig, state_dict) of a LoRA adapter approximating `adapter_name` of `model` (see the module doc).
    compile_kwargs: torch.compile the per-layer conversion with these arguments (PEFT's option)."""
    layers = _check(model, rank, adapter_name)
    config = getattr(model, "peft_config", {}).get(adapter_name)
    if config is not None and config.peft_type.value == "LORA":
        warnings.warn("Converting a PEFT adapter to LoRA that is already a LoRA adapter. There is typically no need "
                      "for that.")
    bias = getattr(config, "bias", "none")
    if bias != "none":
        raise ValueError(f"The adapter's config sets bias={bias}, this is not supported right now.")
    fields = {"rank_pattern": {}, "alpha_pattern": {}, "exclude_modules": set()}
    if config is not None:
        fields["target_modules"] = copy.copy(config.target_modules)
        fields["base_model_name_or_path"] = config.base_model_name_or_path
        if hasattr(config, "layers_pattern"):
            fields.update(layers_pattern=config.layers_pattern, layers_to_transform=config.layers_to_transform)
    else:
        fields["target_modules"] = set()
    r = rank if isinstance(rank, int) else 1   # a threshold's ranks go to rank_pattern
    lora_config = LoraConfig(r=r, lora_alpha=r, **fields)
    if isinstance(lora_config.target_modules, list):
        lora_config.target_modules = set(lora_config.target_modules)
    factors = torch.compile(lora_factors, **compile_kwargs) if compile_kwargs is not None else lora_factors
    state = {}
    for name, layer in (bar(layers, desc="Converting to LoRA") if progressbar else layers):
        A, B, k = factors(layer, rank, adapter_name)
        key = name.removeprefix(_PEFT_PREFIX)
        if k == 0:
            lora_config.exclude_modules.add(key)
            continue
        if k != rank or isinstance(lora_config.target_modules, str):
            lora_config.rank_pattern[key] = lora_config.alpha_pattern[key] = k
        else:
            lora_config.target_modules.add(key)
        state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = A, B
    if config is not None and getattr(config, "modules_to_save", None):
        lora_config.modules_to_save = copy.copy(config.modules_to_save)
        for name, wrapper in adapter_layers(model):
            if isinstance(wrapper, ModulesToSaveWrapper):
                for param_name, param in wrapper.modules_to_save.named_parameters():
                    state[f"{name}.{param_name.rpartition('.')[2]}"] = param.data
    return lora_config, state


def save_as_lora(path: Union[str, os.PathLike], model: nn.Module, rank: Union[int, float],
                 adapter_name: str = "default", progressbar: bool = False, compile_kwargs: Optional[dict] = None):
    """convert_to_lora, then write the adapter (weights and config, one crash-safe commit) to `path`."""
    lora_config, state = convert_to_lora(model, rank, adapter_name, progressbar, compile_kwargs)
    Path(path).mkdir(parents=True, exist_ok=True)
    write_adapter(Path(path), saved_config_dict(lora_config, None, None), state)
