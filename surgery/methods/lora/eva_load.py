"""initialize_lora_eva_weights: EVA's components (eva.py) into a PeftModel's lora_A (PEFT's EVA loading).

For each LoRA layer of the adapter, w = its (r', in_features) rows in the EVA state dict:

    r' = 0       the adapter leaves the layer (the original module goes back when no other adapter is on it)
    r' != r      the adapter is rebuilt with rank r' (B = 0); with adjust_scaling_factors alpha' = alpha r' / r,
                 so the scaling alpha' / r' stays alpha / r; lora_A = w
    r' = r       lora_A = w (B stays 0: the model starts as the base model)
    no entry     (Embedding, convolution, MultiheadAttention layers) rebuilt with init_lora_weights=True, with
                 PEFT's warning

The config then says what the model holds, as PEFT writes it: target_modules = the adapted layers' paths (from 20
on, PEFT's shortest suffixes that select exactly them), rank_pattern / alpha_pattern = {path: value} for each
layer whose rank / alpha differs from r / lora_alpha. Keys may be named as in the model (base_model.model.<path>,
what get_eva_state_dict returns for a PeftModel) or by path (what it returns for the plain model). Everything is
checked before the first layer changes.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable
from typing import Callable, Optional, Union

import torch
from torch import nn

from ...errors import PeftWarning
from ...facade.tuner import TunerModel
from ...rewrite.readapt import rebuild_adapter, remove_adapter
from .eva import UNSUPPORTED_LORA_MODULES, base_root, get_eva_state_dict
from .eva_inputs import (forward_fn_dict, prepare_layer_inputs_fn_language_modeling,
                         prepare_model_inputs_fn_language_modeling)
from .layer import LoraLayer

MIN_TARGET_MODULES_FOR_OPTIMIZATION = 20   # PEFT's: from this many paths on, target_modules is shortened


def _suffixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))][::-1]   # shortest first


def minimal_suffixes(targets: Iterable[str], others: Iterable[str]) -> set[str]:
    """The fewest name suffixes that select every path of `targets` and none of `others` (PEFT's greedy rule:
    per target, in sorted order, its shortest suffix no other module has, unless a chosen one covers it)."""
    targets = set(targets)
    taken = {suffix for other in others for suffix in _suffixes(other)}
    chosen: set[str] = set()
    for path, suffixes in sorted(((t, _suffixes(t)) for t in targets), key=lambda item: item[1]):
        for suffix in suffixes:
            if suffix in chosen or suffix in taken:
                continue
            if not any(path.endswith("." + c) for c in chosen):
                chosen.add(suffix)
                break
    return chosen or targets


def _tuner_of(model: nn.Module) -> TunerModel:
    if isinstance(model, TunerModel):
        return model
    tuner = getattr(model, "base_model", None)
    if isinstance(tuner, TunerModel):
        return tuner
    raise ValueError(f"model must be a PeftModel (get_peft_model(model, LoraConfig(init_lora_weights='eva', ...))), "
                     f"got {type(model).__name__}")


def _entry(state: dict, name: str, path: str):
    for key in (name, path, f"base_model.model.{path}"):
        if key in state:
            return key
    return None


def _check_rows(name: str, layer: nn.Module, w, adapter_name: str) -> None:
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"eva_state_dict[{name!r}] must be a 2-D tensor (rank, in_features), got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    if w.size(0) == 0:
        return
    if isinstance(layer, UNSUPPORTED_LORA_MODULES):
        raise ValueError(f"eva_state_dict[{name!r}]: {name} is a {type(layer).__name__} LoRA layer, which EVA does not "
                         f"initialise (only a rank of 0, removing its adapter, is accepted)")
    width = layer.in_out_features()[0]
    if w.size(1) != width:
        raise ValueError(f"eva_state_dict[{name!r}] has shape {tuple(w.shape)}: {name} takes {width} input features, "
                         f"so lora_A[{adapter_name!r}] needs (rank, {width})")
    if not torch.isfinite(w).all():
        raise ValueError(f"eva_state_dict[{name!r}] holds NaN or inf values")


def _scaling(config, alpha: float, r: int) -> float:
    return alpha / math.sqrt(r) if config.use_rslora else alpha / r


@torch.no_grad()
def _load_eva_state_dict(model: nn.Module, eva_state_dict: dict, adapter_name: str) -> None:
    tuner = _tuner_of(model)
    config, plan = tuner.peft_config[adapter_name], tuner.plans[adapter_name]
    planned = {rw.path: rw for rw in plan.rewrites if not rw.parameter}
    paths = {id(m): n for n, m in base_root(model).named_modules()}
    layers = [(name, m, paths[id(m)]) for name, m in model.named_modules()
              if isinstance(m, LoraLayer) and adapter_name in m.r and paths.get(id(m)) in planned]
    found, used = {}, set()
    for name, layer, path in layers:   # every check first: nothing changes on bad input
        key = _entry(eva_state_dict, name, path)
        if key is not None:
            _check_rows(key, layer, eva_state_dict[key], adapter_name)
            found[path] = eva_state_dict[key]
            used.add(key)
    unused = [k for k in eva_state_dict if k not in used]
    if unused:
        warnings.warn(f"eva_state_dict: {unused} name no LoRA layer of adapter {adapter_name!r}; they are ignored",
                      PeftWarning, stacklevel=3)
    eva_init, default_init = copy.copy(config), copy.copy(config)
    eva_init.init_lora_weights, default_init.init_lora_weights = "eva", True
    initialised, missing, rank_pattern, alpha_pattern = [], [], {}, {}
    for name, layer, path in layers:
        params = planned[path].params
        r, alpha = params["r"], params["lora_alpha"]
        if path in found:
            w = found[path]
            new_rank = w.size(0)
            if new_rank == 0:
                remove_adapter(tuner.model, plan, path)
                continue
            if new_rank != r and config.eva_config.adjust_scaling_factors:
                alpha *= new_rank / r
            on_meta = any(p.device.type == "meta" for p in layer.lora_A[adapter_name].parameters())
            if new_rank != r or on_meta:
                rebuild_adapter(tuner.model, plan, eva_init, path, {**params, "r": new_rank, "lora_alpha": alpha,
                                                                    "scaling": _scaling(config, alpha, new_rank)})
            layer.lora_A[adapter_name].weight.copy_(w)
            initialised.append(path)
        else:
            rebuild_adapter(tuner.model, plan, default_init, path, params)
            missing.append(path)
            new_rank = r
        if new_rank != config.r:
            rank_pattern[path] = new_rank
        if alpha != config.lora_alpha:
            alpha_pattern[path] = alpha
    targets = initialised + missing
    if len(targets) >= MIN_TARGET_MODULES_FOR_OPTIMIZATION:
        chosen = set(targets)   # the others include layers just unwrapped: suffixes must not select them again
        targets = minimal_suffixes(chosen, [n for n, _ in base_root(model).named_modules() if n not in chosen])
    config.target_modules, config.rank_pattern, config.alpha_pattern = targets, rank_pattern, alpha_pattern
    plan.config = config.to_dict()
    if missing:
        kinds = ", ".join(cls.__name__ for cls in UNSUPPORTED_LORA_MODULES)
        warnings.warn(f"the following layers were initialized with init_lora_weights=True because they were not found "
                      f"in the eva state_dict: {missing}\ncurrently the following lora modules are not supported by "
                      f"EVA: {kinds}", PeftWarning, stacklevel=3)


@torch.no_grad()
def initialize_lora_eva_weights(model: nn.Module, dataloader: Optional[Iterable] = None,
                                eva_state_dict: Optional[dict] = None,
                                forward_fn: Optional[Callable] = forward_fn_dict,
                                prepare_model_inputs_fn: Optional[Callable] = prepare_model_inputs_fn_language_modeling,
                                prepare_layer_inputs_fn: Union[Callable, dict[str, Callable], None] =
                                prepare_layer_inputs_fn_language_modeling,
                                adapter_name: str = "default", gather_distributed_inputs: bool = True,
                                show_progress_bar: bool = True) -> None:
    """Initialise the adapter's LoRA layers with EVA (see the module docstring): from `eva_state_dict`, or from
    get_eva_state_dict(model, dataloader, ...) with the other arguments. The adapter's config must have
    init_lora_weights='eva'; it is updated in place (ranks, alphas, targets), as PEFT does."""
    if not hasattr(model, "peft_config"):
        raise ValueError("model must be a PeftModel")
    if len(model.active_adapters) > 1:   # with one adapter, rank 0 may take a layer's adapter off safely
        raise ValueError("`initialize_lora_eva_weights` currently only works with a single active adapter "
                         f"(active: {list(model.active_adapters)})")
    if adapter_name not in model.peft_config:
        raise ValueError(f"adapter {adapter_name!r} not found; adapters: {list(model.peft_config)}")
    if model.peft_config[adapter_name].init_lora_weights != "eva":
        raise ValueError("`initialize_lora_eva_weights` can only be used with `init_lora_weights='eva'` (adapter "
                         f"{adapter_name!r} has init_lora_weights={model.peft_config[adapter_name].init_lora_weights!r})")
    _tuner_of(model)
    if eva_state_dict is None:
        if dataloader is None:
            raise ValueError("dataloader is required if eva_state_dict is not provided")
        eva_state_dict = get_eva_state_dict(model=model, dataloader=dataloader, forward_fn=forward_fn,
                                            prepare_model_inputs_fn=prepare_model_inputs_fn,
                                            prepare_layer_inputs_fn=prepare_layer_inputs_fn,
                                            adapter_name=adapter_name,
                                            gather_distributed_inputs=gather_distributed_inputs,
                                            show_progress_bar=show_progress_bar)
    _load_eva_state_dict(model, eva_state_dict, adapter_name)
