"""EVA (Paischer et al. 2024, Explained Variance Adaptation): lora_A from the principal components of each
layer's inputs (PEFT's get_eva_state_dict; initialize_lora_eva_weights puts them into the model: eva_load.py).

For each adapted Linear / Conv1D layer l of rank r_l, over calibration batches (hooks: eva_inputs.py):

    X_l     the layer's input rows (tokens the attention / label mask keeps)
    PCA     incremental, of X_l (eva_pca.py), keeping k_l = round(r_l rho) components
    stop    layer l once its first rank_l components are stable: cos(v_i^t, v_i^(t-1)) >= tau for i < rank_l
    ranks   the budget sum_l r_l goes to the largest explained-variance ratios among all layers' first k_l
            components: each layer gets 0..k_l ranks (at most rho r_l), the total stays sum_l r_l
    lora_A  V_l[:rank_l] (rank_l, in_features); whiten: rows divided by sqrt(S_l[:rank_l])

Layers fed the very same input (a block's q, k, v projections) share one SVD: the first of them is fitted and
takes the largest of their ranks (PEFT's rule). The batches are cycled until every layer has converged.
A layer that never gets k_l rows in one batch over a full pass is refused (PEFT loops forever there).
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import cycle
from typing import Callable, Optional, Union

import torch
import torch.distributed as dist
from torch import nn

from ...errors import ConfigError
from ...graph.kinds import in_out_features, is_linear_like
from ...graph.walk import module_graph
from ...matching.rules import compile_rule, match_rule
from ...matching.selectors import pattern_value
from ...progress import bar
from .conv import Conv
from .embedding import Embedding
from .eva_config import capped_rho, check_eva_config
from .eva_inputs import (InputHashHook, InputSVDHook, forward_fn_dict, move_inputs_to_device,
                         prepare_layer_inputs_fn_language_modeling, prepare_model_inputs_fn_language_modeling)
from .layer import LoraLayer
from .mha import MultiheadAttention, OutProj
from .param_wrapper import ParamWrapper

# LoRA layers EVA leaves to the default init (PEFT's list, plus surgery's parameter targets and MHA's out_proj)
UNSUPPORTED_LORA_MODULES = (Embedding, MultiheadAttention, Conv, ParamWrapper, OutProj)


def base_root(model: nn.Module) -> nn.Module:
    """The model the adapter's module paths are relative to (a PeftModel's or tuner's underlying model)."""
    if callable(getattr(model, "get_base_model", None)):
        return model.get_base_model()
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and getattr(model, "plans", None) is not None else model


def eva_layers(model: nn.Module, adapter_name: str) -> list[tuple[str, nn.Module, str]]:
    """(name in `model`, layer, path in the base model) of the LoRA layers of `adapter_name` EVA initialises."""
    paths = {id(m): n for n, m in base_root(model).named_modules()}
    return [(name, m, paths.get(id(m), name)) for name, m in model.named_modules()
            if isinstance(m, LoraLayer) and adapter_name in m.r and not isinstance(m, UNSUPPORTED_LORA_MODULES)]


def _config_targets(model: nn.Module, config) -> list[tuple[str, nn.Module, str]]:
    """The Linear / Conv1D modules of a plain model the config targets (every one without target_modules)."""
    if config.target_modules is None and not getattr(config, "target_types", None):
        chosen = None
    else:
        chosen = set(match_rule(module_graph(model), compile_rule(copy.copy(config), model), strict=False))
    return [(name, m, name) for name, m in model.named_modules()
            if is_linear_like(m) and (chosen is None or name in chosen)]


@contextlib.contextmanager
def _adapters_off(model: nn.Module):
    """The base model's behaviour inside the block: EVA reads the inputs the pre-trained layers see."""
    if callable(getattr(model, "disable_adapter", None)):
        with model.disable_adapter():
            yield
        return
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    states = [m._disable_adapters for m in layers]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m, off in zip(layers, states):
            m.enable_adapters(not off)


def _device(model: nn.Module) -> Optional[torch.device]:
    devices = list({p.device for p in model.parameters() if p.device.type != "meta"})
    if len(devices) > 1:
        warnings.warn(f"Could not determine device, model has multiple devices: {devices}")
        return None
    return devices[0] if devices else None


def _layer_functions(prepare_layer_inputs_fn, names: list[str]) -> dict:
    """{layer name: its input function (None: the flattened input)}; a mapping naming no target is refused."""
    if not isinstance(prepare_layer_inputs_fn, Mapping):
        return dict.fromkeys(names, prepare_layer_inputs_fn)
    unknown = [k for k in prepare_layer_inputs_fn if k not in names]
    if unknown:
        raise ValueError(f"prepare_layer_inputs_fn is a mapping but the following module names were not found in the "
                         f"model: {unknown} (the layers EVA initialises: {names})")
    return {name: prepare_layer_inputs_fn.get(name) for name in names}


def _rank_distribution(svd_hooks: dict, fitted_by: dict, shared_with: dict, budget: int, max_components: dict):
    """{layer: rank}: the budget's worth of the largest explained-variance ratios, counted per layer."""
    ratios = {name: hook.svd.explained_variance_ratio_[: max_components[name]] for name, hook in svd_hooks.items()}
    owners, values = zip(*[(layer, v) for layer, fitted in fitted_by.items() for v in ratios[fitted]])
    order = torch.stack(values).argsort(descending=True)
    counts = Counter(owners[i] for i in order[:budget].tolist())
    ranks = {layer: counts.get(layer, 0) for layer in fitted_by}
    for layer, fitted in shared_with.items():   # the fitted layer of a group takes the group's largest rank
        if ranks[fitted] < ranks[layer]:
            ranks[fitted], ranks[layer] = ranks[layer], ranks[fitted]
    return ranks


def _in_features(module: nn.Module) -> Optional[int]:
    base = module.get_base_layer() if isinstance(module, LoraLayer) else module
    sizes = in_out_features(base)
    return sizes[0] if sizes else getattr(module, "in_features", None)


def _component_counts(model, config, targets, modules) -> tuple[dict, dict, int]:
    """({layer: r}, {layer: round(r rho) components}, the rank budget sum r); refuses more components than a
    layer has input features."""
    settings = config.eva_config
    rho = settings.rho
    if rho > 1000:
        largest = max((max(p.shape) for p in model.parameters() if p.dim()), default=0)
        rho = capped_rho(rho, config.r, largest)
    ranks = {name: pattern_value(config.rank_pattern, path, config.r) for name, _, path in targets}
    counts = {name: round(rank * rho) for name, rank in ranks.items()}
    for name, k in counts.items():
        width = _in_features(modules[name])
        if width is not None and k > width:
            raise ConfigError(f"EVA: layer {name!r} would keep round(r * rho) = {k} components of its "
                              f"{width}-dimensional inputs, more than there are (r = {ranks[name]}, rho = "
                              f"{settings.rho}); lower r (rank_pattern for this layer) or rho")
    return ranks, counts, sum(ranks.values())


def _shared_inputs(model, modules, functions, batch, model_input, forward_fn, gather, handles) -> dict:
    """{layer: the earlier layer fed the very same rows in the first batch} (one SVD serves both)."""
    hooks = {}
    for name, module in modules.items():
        hooks[name] = InputHashHook(name=name, prepare_layer_inputs_fn=functions[name],
                                    gather_distributed_inputs=gather)
        hooks[name].model_input = model_input
        handles[name] = module.register_forward_hook(hooks[name])
    forward_fn(model, batch)
    for name in list(handles):
        handles.pop(name).remove()
    silent = [name for name, hook in hooks.items() if not hook.hashed_inputs]
    if silent:
        raise ValueError(f"EVA: layers {silent} received no input when forward_fn ran the first batch; check "
                         f"forward_fn and that these layers are used by the model's forward")
    groups: dict = {}
    for name, hook in hooks.items():
        groups.setdefault(hook.hashed_inputs[0], []).append(name)
    return {other: names[0] for names in groups.values() for other in names[1:]}


def _collect(model, dataloader, config, targets, forward_fn, prepare_model_inputs_fn, prepare_layer_inputs_fn,
             gather, show_progress_bar) -> dict:
    try:
        batches_per_pass = len(dataloader)
    except TypeError:
        raise TypeError(f"dataloader must have a length (a DataLoader or a list of batches), got "
                        f"{type(dataloader).__name__}") from None
    if batches_per_pass == 0:
        raise ValueError("dataloader is empty")
    if not targets:
        raise ConfigError("EVA found no layer to initialise: no Linear / Conv1D layer matches the config's "
                          "target_modules (Embedding, convolution and MultiheadAttention layers keep their init)")
    distributed = dist.is_available() and dist.is_initialized()
    if distributed and gather:
        warnings.warn("torch.distributed is initialized and `gather_distributed_inputs` is True, therefore EVA "
                      "initialization will gather tensors from all ranks. Ensure the model does not receive the "
                      "same inputs on different ranks.")
    modules = {name: module for name, module, _ in targets}
    functions = _layer_functions(prepare_layer_inputs_fn, list(modules))
    _, max_components, budget = _component_counts(model, config, targets, modules)

    def model_input_for(batch):
        return prepare_model_inputs_fn(batch, config) if prepare_model_inputs_fn is not None else copy.deepcopy(batch)

    def on_device(batch):
        return move_inputs_to_device(batch, device) if device is not None else batch

    training, device = model.training, _device(model)
    model.eval()
    handles: dict = {}   # layer -> its hook's handle, while hooked
    progress = None
    try:
        first = on_device(next(iter(dataloader)))
        shared_with = _shared_inputs(model, modules, functions, first, model_input_for(first), forward_fn, gather,
                                     handles)
        for names in _groups(shared_with):   # a group's layers all keep the largest count among them
            largest = max(max_components[n] for n in names)
            max_components.update(dict.fromkeys(names, largest))
        svd_hooks = {}
        for name, module in modules.items():
            if name not in shared_with:
                svd_hooks[name] = InputSVDHook(n_components=max_components[name], sim_thresh=config.eva_config.tau,
                                               name=name, prepare_layer_inputs_fn=functions[name],
                                               gather_distributed_inputs=gather)
                handles[name] = module.register_forward_hook(svd_hooks[name])
        fitted_by = {**{n: n for n in svd_hooks}, **shared_with}
        converged = dict.fromkeys(svd_hooks, False)
        ranks = dict(max_components)
        batches = cycle(dataloader)
        if show_progress_bar and (not distributed or dist.get_rank() == 0):
            batches = progress = bar(batches, desc="EVA", position=0)
        for step, batch in enumerate(batches):
            batch = on_device(batch)
            model_input = model_input_for(batch)
            for name, hook in svd_hooks.items():
                done = bool(torch.all(hook.converged[: ranks[name]]))
                if not converged[name] and done:   # converged now: its SVD stops
                    handles.pop(name).remove()
                    converged[name] = True
                    continue
                if converged[name] and not done:   # a new rank needs components not stable yet: resume
                    handles[name] = modules[name].register_forward_hook(hook)
                    converged[name] = False
                hook.model_input = model_input
            if progress is not None:
                flags = list(converged.values()) + [converged[v] for v in shared_with.values()]
                progress.set_description(f"{sum(flags)}/{len(flags)} layers have converged")
            if all(converged.values()):
                break
            forward_fn(model, batch)
            unfitted = [n for n, h in svd_hooks.items() if not hasattr(h.svd, "components_")]
            if unfitted:
                if step + 1 >= batches_per_pass:
                    raise ValueError(f"EVA: over a full pass of the dataloader, layers {unfitted} never received "
                                     f"as many input rows in one batch as their components ("
                                     f"{[max_components[n] for n in unfitted]}); use larger batches, or lower r "
                                     f"or rho")
                continue
            ranks = _rank_distribution(svd_hooks, fitted_by, shared_with, budget, max_components)
    finally:
        for handle in handles.values():
            handle.remove()
        if progress is not None:
            progress.close()
        model.train(training)
    return _components(svd_hooks, fitted_by, ranks, config.eva_config.whiten, device)


def _groups(shared_with: dict) -> list[list[str]]:
    """The layers fed one input, as lists: the fitted layer first."""
    groups: dict = {}
    for layer, fitted in shared_with.items():
        groups.setdefault(fitted, [fitted]).append(layer)
    return list(groups.values())


def _components(svd_hooks, fitted_by, ranks, whiten, device) -> dict:
    """{layer: its first rank components (whitened: divided by sqrt(S))}, in the rank distribution's order."""
    state = {}
    for name, rank in ranks.items():
        hook = svd_hooks[fitted_by[name]]
        if not torch.all(hook.converged[:rank]):
            raise ValueError(f"Layer {name} has not converged but was assigned rank {rank}. "
                             "Please report this issue at https://github.com/huggingface/peft/issues")
        u = hook.svd.components_[:rank].clone()
        if whiten:
            u = u / hook.svd.singular_values_[:rank].sqrt().reshape(-1, 1)
        state[name] = u.to(device) if device is not None else u
    return state


@torch.no_grad()
def get_eva_state_dict(model: nn.Module, dataloader: Iterable, peft_config=None,
                       forward_fn: Optional[Callable] = forward_fn_dict,
                       prepare_model_inputs_fn: Optional[Callable] = prepare_model_inputs_fn_language_modeling,
                       prepare_layer_inputs_fn: Union[Callable, dict[str, Callable], None] =
                       prepare_layer_inputs_fn_language_modeling,
                       adapter_name: str = "default", gather_distributed_inputs: bool = True,
                       show_progress_bar: bool = True) -> dict:
    """{layer name: lora_A rows (rank, in_features)} from the SVD of each layer's inputs (see the module
    docstring). `model`: a PeftModel (its layers of `adapter_name`, run with adapters disabled; names as in
    model.named_modules()) or a plain model with `peft_config` (its targeted Linear / Conv1D layers).
    forward_fn(model, batch) runs a batch; prepare_model_inputs_fn(batch, peft_config) and
    prepare_layer_inputs_fn(layer_input, model_input, layer_name) (or {layer name: function}) choose the rows
    (defaults: language modelling, see eva_inputs.py). gather_distributed_inputs: under torch.distributed, fit
    on every rank's rows."""
    is_peft_model = hasattr(model, "peft_config")
    if peft_config is None:
        if not is_peft_model:
            raise ValueError("peft_config is required if model is not a PeftModel")
        if adapter_name not in model.peft_config:
            raise ValueError(f"adapter {adapter_name!r} not found; adapters: {list(model.peft_config)}")
        peft_config = model.peft_config[adapter_name]
    if getattr(peft_config, "eva_config", None) is None:
        raise ConfigError(f"{type(peft_config).__name__}.eva_config is None: EVA needs its settings; build the "
                          f"config with init_lora_weights='eva' (and eva_config=EvaConfig(...) for other settings)")
    check_eva_config(peft_config.eva_config, f"{type(peft_config).__name__}.eva_config")
    targets = eva_layers(model, adapter_name) if is_peft_model else _config_targets(model, peft_config)
    with _adapters_off(model) if is_peft_model else contextlib.nullcontext():
        return _collect(model, dataloader, peft_config, targets, forward_fn, prepare_model_inputs_fn,
                        prepare_layer_inputs_fn, gather_distributed_inputs, show_progress_bar)
