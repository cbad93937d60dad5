"""CorDA (Yang et al. 2024): context-oriented decomposition, LoRA factors from W weighted by what its inputs look
like (PEFT's preprocess_corda and corda_init; init_lora_weights="corda" with corda_config = CordaConfig(...)).

preprocess_corda(model, config, run_model) runs the model on calibration data once and, per target Linear:

    C = mean over forward calls of X^T X,  X the call's inputs divided by max(X)   (in x in)
    C' = C + d mean(diag C) I   (d = 0.01, doubled until ||C' C'^-1 - I|| < 0.05)
    W C' = U S V'^T,   V = (V'^T C'^-1)^T        so W = U S V^T
    ipm: keep the top r triplets (adapt what the task data excites most);  kpm: the last r (keep the rest intact)

and stores them on the module (`module.eigens`). get_peft_model then takes, for s the scaling,

    A = sqrt(S / s) V^T,   B = U sqrt(S / s),   W <- W - s B A

so the adapted model starts as the original; the base weights are rewritten (as PiSSA; the save-time conversion
to plain LoRA applies). cache_file / covariance_file keep the cropped triplets / the covariances for reuse.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ...checkpoint.atomic import atomic_write
from ...errors import CheckpointError, ConfigError
from ...graph.kinds import is_conv1d, is_linear_like
from ...graph.walk import module_graph
from ...matching.rules import compile_rule, match_rule
from ...matching.selectors import pattern_value
from ...progress import bar
from ...quantized import backend_of
from .init_svd import FLOAT_DTYPES, set_factors, store_residual

_MAX_DAMPING_STEPS = 64   # d doubles each step: past 0.01 * 2^64 the covariance is not the problem


@dataclass
class CordaEigens:
    S_WC: torch.Tensor   # (r,)
    U_WC: torch.Tensor   # (out, r)
    V_WC: torch.Tensor   # (in, r)


def target_modules(model: nn.Module, config):
    """(name, module) of the config's targets that are Linear / Conv1D layers, in model order."""
    if config.target_modules is None and not getattr(config, "target_types", None):
        raise ConfigError("preprocess_corda needs lora_config.target_modules (the layers CorDA initialises), e.g. "
                          "['q_proj', 'v_proj'] or 'all-linear'")
    graph = module_graph(model)
    for name in match_rule(graph, compile_rule(copy.copy(config), model), strict=False):
        module = graph.nodes[name]["module"]
        if is_linear_like(module):
            if backend_of(module) is not None:
                raise ConfigError(f"preprocess_corda: {name!r} is quantized ({backend_of(module).label}); CorDA "
                                  f"decomposes float weights: preprocess and initialise the float model")
            yield name, module


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


@torch.no_grad()
def preprocess_corda(model: nn.Module, lora_config, run_model: Optional[Callable[[], None]] = None,
                     hooked_model: Optional[nn.Module] = None) -> None:
    """Give each target Linear of `model` its CorDA triplets (`module.eigens`); see the module docstring.

    run_model: runs the model on calibration samples (one sample per forward call, as in PEFT; a batch is
    taken as its rows); not needed when corda_config's cache or covariance file exists. hooked_model: a model
    to observe instead of `model` (the same module names)."""
    settings = lora_config.corda_config
    if settings is None:
        raise ConfigError("preprocess_corda: lora_config.corda_config is None; build the LoraConfig with "
                          "init_lora_weights='corda' (and corda_config=CordaConfig(...) for other settings)")
    targets = dict(target_modules(model, lora_config))
    cache = settings.cache_file
    if cache is not None and os.path.exists(cache) and os.path.getsize(cache) > 0:
        stored = _load(cache, model)
        for name, module in targets.items():
            module.eigens = CordaEigens(*(stored[f"{name}.eigens.{key}"] for key in ("S_WC", "U_WC", "V_WC")))
        return
    covariances, counts = _covariances(model, lora_config, targets, run_model, hooked_model)
    ranks = {name: pattern_value(lora_config.rank_pattern, name, lora_config.r) for name in targets}
    items = bar(list(targets.items()), desc="Collecting eigens") if settings.verbose else targets.items()
    for name, module in items:
        module.eigens = _cropped(_eigens(module, covariances[name], name), ranks[name], settings.corda_method, name)
    if not settings.prune_temporary_fields:   # PEFT leaves these on the modules when asked to
        for name, module in targets.items():
            module.covariance_matrix, module.sample_count = covariances[name], counts.get(name)
            module.corda_method, module.rank = settings.corda_method, ranks[name]
    if cache is not None:
        _save({f"{name}.eigens.{key}": getattr(m.eigens, key) for name, m in targets.items()
               for key in ("S_WC", "U_WC", "V_WC")}, cache)


def _save(tensors: dict, path: str) -> None:
    """torch.save's format (PEFT reads these files too), written atomically: a crash keeps the old file."""
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(Path(path), lambda tmp: torch.save(tensors, tmp))


def _load(path: str, model: nn.Module) -> dict:
    """A cache or covariance file: tensors only (weights_only=True: a pickled payload never runs)."""
    try:
        stored = torch.load(path, map_location=_device(model), weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} could not be read safely as a CorDA tensor file (weights_only=True): "
                              f"{exc}") from None
    if not isinstance(stored, dict) or not all(isinstance(v, torch.Tensor) for v in stored.values()):
        raise CheckpointError(f"{path} does not hold a mapping of names to tensors")
    return stored


def _covariances(model, config, targets: dict, run_model, hooked_model) -> tuple[dict, dict]:
    """({name: mean of X^T X over the forward calls}, {name: forward calls}), or the covariances of
    covariance_file when it exists (no counts then)."""
    settings = config.corda_config
    path = settings.covariance_file
    if path is not None and os.path.exists(path) and os.path.getsize(path) > 0:
        stored = _load(path, model)
        return {name: stored[name] for name in targets}, {}
    if run_model is None:
        raise ValueError("run_model must be specified when covariance file and cache file aren't built.")
    observed = hooked_model if hooked_model is not None else model
    observed.eval()
    watched = dict(target_modules(observed, config)) if hooked_model is not None else targets
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(watched, 0)

    def hook_for(name):
        def hook(module, inputs, output):
            x = inputs[0].detach()
            x = x.reshape(-1, x.shape[-1]) if x.dim() > 2 else x
            x = x if settings.use_float16_for_covariance else x.float()
            x = x / torch.max(x).abs()   # PEFT's normalisation: the largest value, not the largest magnitude
            if not torch.isfinite(x).all():
                raise ValueError("Invalid value found in input, please check your input data.")
            covariance = x.t().matmul(x)
            if not torch.isfinite(covariance).all():
                raise ValueError(f"Invalid value found in covariance of {name!r} (overflow; with "
                                 f"use_float16_for_covariance=True, try False)")
            sums[name] = sums[name] + covariance if name in sums else covariance
            counts[name] += 1
        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in watched.items()]
    try:
        run_model()
    finally:
        for handle in handles:
            handle.remove()
    silent = [name for name in targets if not counts.get(name)]
    if silent:
        raise ValueError(f"preprocess_corda: run_model never ran {silent}; feed calibration samples through every "
                         f"target layer")
    covariances = {name: sums[name] / counts[name] for name in targets}
    if path is not None:
        _save(covariances, path)
    return covariances, counts


def _eigens(module: nn.Module, covariance: torch.Tensor, name: str) -> CordaEigens:
    """U, S, V of W = U S V^T with W C' = U S V'^T (C' the damped covariance; PEFT's arithmetic)."""
    w = module.weight.data.float()
    w = w.T if is_conv1d(module) else w
    covariance = covariance.float()
    n = covariance.size(0)
    scale = torch.mean(torch.diag(covariance))
    if not scale > 0:
        raise ValueError(f"preprocess_corda: the inputs of {name!r} are all zero in the calibration data")
    damp = 0.01
    for _ in range(_MAX_DAMPING_STEPS):
        fixed = covariance + torch.diag(torch.ones(n, device=covariance.device) * scale * damp)
        inverse = torch.linalg.inv(fixed)
        if torch.dist(fixed @ inverse, torch.eye(n, device=covariance.device)).item() < 0.05:
            break
        damp *= 2
    else:
        raise ValueError(f"preprocess_corda: the input covariance of {name!r} stays singular after damping")
    U, S, Vh = torch.linalg.svd(w @ fixed, full_matrices=False)
    return CordaEigens(S_WC=S, U_WC=U, V_WC=(Vh @ inverse).transpose(0, 1))


def _cropped(eigens: CordaEigens, rank: int, method: str, name: str) -> CordaEigens:
    if rank > eigens.S_WC.numel():
        raise ValueError(f"preprocess_corda: r={rank} for {name!r}, which has only {eigens.S_WC.numel()} components; "
                         f"lower r (rank_pattern for this module)")
    keep = slice(None, rank) if method == "ipm" else slice(-rank, None)
    return CordaEigens(S_WC=eigens.S_WC[keep].clone(), U_WC=eigens.U_WC[:, keep].clone(),
                       V_WC=eigens.V_WC[:, keep].clone())


def corda_refusal(base: nn.Module, config, r: int) -> Optional[str]:
    if backend_of(base) is not None or base.weight.dtype not in FLOAT_DTYPES:
        return ("Please initialize CorDA under float32, float16, or bfloat16. Subsequently, re-quantize the residual "
                "model to help minimize quantization errors.")
    eigens = getattr(base, "eigens", None)
    if eigens is None:
        return ("`eigens` attribute not found for layer, please run `preprocess_corda` first (with this LoraConfig "
                "and model)")
    in_f, out_f = (base.weight.shape if is_conv1d(base) else base.weight.shape[::-1])
    shapes = {"U": (tuple(eigens.U_WC.shape), (out_f, r)), "S": (tuple(eigens.S_WC.shape), (r,)),
              "V": (tuple(eigens.V_WC.shape), (in_f, r))}
    for key, (found, expected) in shapes.items():
        if found != expected:
            return (f"Matrix {key} size mismatch: {found} vs. {expected}. Please make sure the `lora_config` and "
                    f"`model` argument of `preprocess_corda` is consistent with `get_peft_model` (same rank); a "
                    f"cache_file must be built with the same model and rank")
    if not all(torch.isfinite(t).all() for t in (eigens.S_WC, eigens.U_WC, eigens.V_WC)):
        return "Invalid value found in matrix U, S or V of its CorDA eigens (NaN or inf)"
    return None


@torch.no_grad()
def corda_init(layer, name: str, config) -> None:
    base = layer.get_base_layer()
    eigens, s = base.eigens, layer.scaling[name]
    W = base.weight.to(torch.float32)
    W = W.T if layer.fan_in_fan_out else W
    S = eigens.S_WC / s
    lora_A = eigens.V_WC.t().mul(S.sqrt().view(-1, 1)).contiguous()
    lora_B = eigens.U_WC.mul(S.sqrt()).contiguous()
    residual = W - (s * lora_B) @ lora_A
    set_factors(layer, name, lora_A, lora_B)
    store_residual(layer, residual)
    del base.eigens   # as PEFT: used once
