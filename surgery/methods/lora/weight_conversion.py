"""save_pretrained(..., path_initial_model_for_weight_conversion=P): a trained PiSSA / OLoRA adapter saved as a
plain LoRA adapter of rank 2r for the ORIGINAL base (PEFT's subtract_mutated_init). With A_0, B_0 the factors at
initialisation (saved in P before training) and A, B the trained ones:

    W = W_res + s B_0 A_0                    (the init)
    W_res + s B A = W + s (B A - B_0 A_0) = W + s [B | -B_0] [A ; A_0]
    A' = cat(A, A_0) along the rank,  B' = cat(B, -B_0) along the rank,  r' = 2r,  alpha' = 2 alpha

so the scaling alpha' / r' = alpha / r is unchanged (with rsLoRA alpha' = sqrt(2) alpha keeps alpha / sqrt(r)). As
PEFT: P's adapter_config.json is rewritten with init_lora_weights=True first (so loading P does not decompose the
base again), only lora_A / lora_B tensors are kept, and rsLoRA with rank_pattern / alpha_pattern is refused (the
per-module scaling cannot be rebuilt). Nothing is written before every check has passed.
"""
from __future__ import annotations

import os
import re

import torch

from ...checkpoint.state import get_peft_model_state_dict
from ...errors import CheckpointError, ConfigError


def _free_name(peft_model, path: str) -> str:
    """The initial adapter's temporary name: P's folder name, as PEFT, unless taken or not a usable name."""
    base = re.sub(r"[^A-Za-z0-9_-]", "_", os.path.basename(os.path.normpath(path))).lstrip("-") or "initial"
    name, n = base, 0
    while name in peft_model.peft_config:
        n += 1
        name = f"{base}_{n}"
    return name


def converted_for_initial_model(peft_model, adapter_name: str, tensors: dict, path, state_dict=None):
    """(config, tensors) to save for adapter `adapter_name` instead of its own: a LoRA adapter of rank 2r for the
    original base, given the initial adapter saved at `path` (see the module docstring). `tensors` are the trained
    ones being saved (from save_pretrained's state_dict= when given); the initial adapter's are read from the
    model after loading it, so `state_dict` is not needed for them."""
    config = peft_model.peft_config[adapter_name]
    if config.use_rslora and (config.rank_pattern or config.alpha_pattern):
        raise ConfigError("Passing `path_initial_model_for_weight_conversion` to `save_pretrained` is not supported "
                          "when using `rank_pattern` or `alpha_pattern` at the same time as `use_rslora=True`.")
    if any(".lora_B." in key and key.endswith(".bias") for key in tensors):
        raise ConfigError(f"adapter {adapter_name!r} has lora_bias=True: its trained bias has no rank to "
                          f"concatenate, so it cannot be converted with path_initial_model_for_weight_conversion")
    path = os.fspath(path)
    initial_config = config.copy()
    initial_config.init_lora_weights = True
    initial_config.save_pretrained(path)
    temporary = _free_name(peft_model, path)
    peft_model.load_adapter(path, adapter_name=temporary)
    try:
        initial = get_peft_model_state_dict(peft_model, adapter_name=temporary)
    finally:
        peft_model.delete_adapter(temporary)
    out = {}
    for key, tensor in tensors.items():
        if "lora_A" not in key and "lora_B" not in key:
            continue   # as PEFT: only the factors make up the converted adapter
        if key not in initial or initial[key].shape != tensor.shape:
            found = tuple(initial[key].shape) if key in initial else "nothing"
            raise CheckpointError(f"{path}: the initial adapter holds {found} for {key!r}, the trained adapter "
                                  f"{tuple(tensor.shape)}; pass the directory saved from this adapter right after "
                                  f"get_peft_model, before training")
        start = initial[key].to(device=tensor.device, dtype=tensor.dtype)
        out[key] = torch.cat([tensor, start], dim=0) if "lora_A" in key else torch.cat([tensor, -start], dim=1)
    return _doubled(config), out


def _doubled(config):
    """The config of the converted adapter: rank 2r with the same scaling, a plain LoRA init."""
    saved = config.copy()
    saved.init_lora_weights = True
    saved.r *= 2
    saved.lora_alpha = saved.lora_alpha * 2 ** 0.5 if saved.use_rslora else saved.lora_alpha * 2
    if saved.rank_pattern:
        saved.rank_pattern = {key: 2 * value for key, value in saved.rank_pattern.items()}
    if saved.alpha_pattern:
        saved.alpha_pattern = {key: 2 * value for key, value in saved.alpha_pattern.items()}
    return saved
