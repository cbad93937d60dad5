"""LoraModel.add_weighted_adapter: a new LoRA adapter made from existing ones (PEFT's API and arithmetic).

Each existing adapter i has, on a layer, factors A_i, B_i and scaling s_i, so its update is s_i * B_i @ A_i.
The new adapter (rank r', lora_alpha = r', so its scaling is 1, or sqrt(r') with rsLoRA) gets, per layer:

  cat       A' = [w_i s_i A_i] stacked along the rank, B' = [B_i] side by side: exact, r' = sum of ranks
  linear    A' = sum_i c_i sign_i A_i, B' = sum_i c_i B_i with c_i = sqrt(|w_i s_i|) (the sign on A only);
            ties / dare_linear / dare_ties / magnitude_prune combine A's and B's alike with c_i as weights.
            All ranks must be equal; r' = that rank. Only an approximation of sum_i w_i s_i B_i A_i.
  *svd      D = combine(s_i B_i A_i, w_i) in the (out, in) layout of B @ A (svd: the weighted sum), then the
            best rank-r' factorisation of D: B' = U_r' S_r', A' = Vh_r' (svd_clamp: both clamped to the
            svd_clamp quantile of their values). r' = svd_rank, else the largest rank.

combine (PEFT's merge_utils, the TIES / DARE papers):
  magnitude_prune   keep the density fraction of largest |values| of each tensor, then the weighted sum
  ties              prune as above, elect a sign per entry (sum of values: "total", or count: "frequency"),
                    average the weighted values that agree with it
  dare_linear       keep each value with probability density (torch.bernoulli: the torch RNG), rescale by
                    1 / density, then the weighted sum
  dare_ties         dare's random pruning, then ties' sign election and disjoint mean

The new adapter is added like any other (inactive, frozen), its config the first adapter's with r, lora_alpha,
the union of the target_modules and empty rank/alpha patterns, as PEFT does. One adapter alone is always
combined linearly. Where PEFT would leave an unusable adapter (svd_rank above a layer's min(out, in): its
factors get the wrong shape), the missing rank is filled with zeros instead.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Optional

import torch

from ...config.targets import union_of_targets
from ...rewrite.trainable import adapter_layers
from .layer import LoraLayer

SVD_TYPES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
FACTOR_TYPES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
COMBINATION_TYPES = ("cat",) + FACTOR_TYPES + SVD_TYPES


# -- combining task tensors (stacked along a new dim 0) ----------------------------------------------------
def _weighted(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return stacked * weights.view(weights.shape + (1,) * (stacked.dim() - weights.dim()))


def _keep_largest(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """tensor with all but its int(density * numel) largest-magnitude values set to 0."""
    flat = tensor.reshape(-1)
    keep = torch.zeros_like(flat)
    keep[torch.topk(flat.abs(), k=int(density * flat.numel()), largest=True).indices] = 1
    return tensor * keep.view(tensor.shape)


def _keep_random(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """DARE: each value kept with probability density, the kept ones rescaled by 1 / density."""
    return tensor * torch.bernoulli(torch.full_like(tensor, density)) / density


def _pruned(tensors: list[torch.Tensor], density: Optional[float], how: str, combination_type: str):
    if density is None:
        raise TypeError(f"combination_type={combination_type!r} prunes the adapters: give density, the fraction "
                        f"of values to keep (a float in [0, 1])")
    if density >= 1:
        warnings.warn(f"The density {density} is greater than or equal to 1, no pruning will be performed.")
        return tensors
    if density < 0:
        raise ValueError(f"Density should be >= 0, got {density}")
    prune = _keep_largest if how == "magnitude" else _keep_random
    return [prune(t, density) for t in tensors]


def _sign_agreement(stacked: torch.Tensor, method: str) -> torch.Tensor:
    """Where each task tensor's sign agrees with the elected one (ties >= 0 elect +)."""
    sign = stacked.sign()
    if method == "total":
        votes = stacked.sum(dim=0)
    elif method == "frequency":
        votes = sign.sum(dim=0)
    else:
        raise RuntimeError(f'Unimplemented mask method "{method}"')
    return sign == torch.where(votes >= 0, 1, -1)


def combine(tensors: list[torch.Tensor], weights: torch.Tensor, kind: str, density: Optional[float] = None,
            majority_sign_method: str = "total", combination_type: Optional[str] = None) -> torch.Tensor:
    """Merge same-shaped task tensors with `weights` by `kind`: linear, ties, dare_linear, dare_ties or
    magnitude_prune (PEFT's merge_utils functions of those names)."""
    name = combination_type or kind
    if kind in ("ties", "magnitude_prune"):
        tensors = _pruned(tensors, density, "magnitude", name)
    elif kind in ("dare_linear", "dare_ties"):
        tensors = _pruned(tensors, density, "random", name)
    elif kind != "linear":
        raise ValueError(f"Invalid combination type: {name}")
    stacked = torch.stack(tensors, dim=0)
    if kind in ("ties", "dare_ties"):
        agree = _sign_agreement(stacked, majority_sign_method)
        kept = (_weighted(stacked, weights) * agree).sum(dim=0)
        return kept / torch.clamp(agree.sum(dim=0), min=1.0)
    return _weighted(stacked, weights).sum(dim=0)


# -- checks and the new adapter's config ---------------------------------------------------------------
def _max_rank(config) -> int:
    """The largest rank an adapter has on any layer (its r, or a larger rank_pattern value)."""
    return max(config.r, *config.rank_pattern.values()) if config.rank_pattern else config.r


def check_arguments(tuner, adapters: list[str], weights: list[float], combination_type: str,
                    svd_rank: Optional[int]):
    """(combination type, new rank, new target_modules), or PEFT's error for arguments it refuses."""
    adapters = list(adapters)
    for adapter in adapters:
        if adapter not in tuner.peft_config:
            raise ValueError(f"Adapter {adapter} does not exist")
    if not adapters:
        raise ValueError(f"Found no adapter matching the names in {adapters}")
    if len(weights) != len(adapters):
        raise ValueError(f"add_weighted_adapter needs one weight per adapter: got {len(weights)} weight(s) for "
                         f"{len(adapters)} adapter(s) {adapters}")
    for adapter in adapters:
        if getattr(tuner.peft_config[adapter], "target_parameters", None):
            raise ValueError(f"add_weighted_adapter does not support targeting nn.Parameter (problematic adapter "
                             f"'{adapter}')")
    clashes = [m for m in tuner.model.modules() if getattr(m, "_surgery_modules_to_save", False)
               and sum(adapter in m.modules_to_save for adapter in adapters) > 1]
    if clashes:
        raise ValueError(f"Cannot add weighted adapters if they target the same module with modules_to_save, but "
                         f"found {len(clashes)} such instance(s).")

    if len(adapters) == 1:   # one adapter: only reweighting it makes sense
        combination_type = "linear"
    ranks = [_max_rank(tuner.peft_config[adapter]) for adapter in adapters]
    if combination_type in FACTOR_TYPES:
        if len(set(ranks)) != 1:
            raise ValueError(f"All adapters must have the same r value when using combination_type linear, ties, "
                             f"dare_ties or dare_linear. (combination_type={combination_type!r}; ranks "
                             f"{dict(zip(adapters, ranks))}; use 'cat' or an svd type to combine different ranks)")
        new_rank = ranks[0]
    elif combination_type == "cat":
        new_rank = sum(ranks)
    elif combination_type in SVD_TYPES:
        new_rank = svd_rank or max(ranks)
    else:
        raise ValueError(f"Invalid combination_type: {combination_type} (one of {', '.join(COMBINATION_TYPES)})")

    targets = [tuner.peft_config[adapter].target_modules for adapter in adapters]
    kinds = {"str" if isinstance(t, str) else "names" if isinstance(t, (list, set, tuple)) else type(t).__name__
             for t in targets}
    if len(kinds) > 1:
        raise ValueError("all adapter configs should follow the same target modules type. Combining adapters with "
                         "`target_modules` type being a mix of list/set and string is not supported.")
    return combination_type, new_rank, union_of_targets(targets)


def _check_bias(tuner, config) -> None:
    """PEFT's rule, checked before anything changes: at most one adapter of a model trains biases."""
    biased = [c for c in tuner.peft_config.values() if (getattr(c, "bias", "none") or "none") != "none"]
    if biased and (getattr(config, "bias", "none") or "none") != "none":
        raise ValueError(f"{type(tuner).__name__} supports only 1 adapter with bias. When using multiple adapters, "
                         f"set bias to 'none' for all adapters.")


# -- the per-layer arithmetic ----------------------------------------------------------------------------
def _factors(layer: LoraLayer, name: str):
    """(A, B) tensors of adapter `name` on this layer (nn.Linear/conv weights or embedding parameters)."""
    if name in layer.lora_A:
        return layer.lora_A[name].weight, layer.lora_B[name].weight
    embedding_A = layer._modules.get("lora_embedding_A")
    if embedding_A is not None and name in embedding_A:
        return embedding_A[name], layer._modules["lora_embedding_B"][name]
    return None


def _is_embedding(layer: LoraLayer, adapters: list[str]) -> bool:
    embedding_A = layer._modules.get("lora_embedding_A")
    return embedding_A is not None and any(adapter in embedding_A for adapter in adapters)


def _no_lora(layer: LoraLayer) -> ValueError:
    return ValueError(f"No matching LoRAs found on {layer._layer_name()}: none of the adapters to combine is on "
                      f"this layer, which the new adapter's target_modules reach. Please raise an issue on GitHub.")


def _cat(layer, adapters, weights, new_A, new_B):
    parts_A, parts_B = [], []
    for adapter, weight in zip(adapters, weights):
        factors = _factors(layer, adapter)
        if factors is not None:
            parts_A.append(factors[0].detach() * weight * layer.scaling[adapter])
            parts_B.append(factors[1].detach())
    if not parts_A:
        raise _no_lora(layer)
    A, B = torch.cat(parts_A, dim=0), torch.cat(parts_B, dim=1)
    full_A, full_B = torch.zeros_like(new_A), torch.zeros_like(new_B)
    full_A[: A.shape[0]] = A   # layers whose rank_pattern rank is below the max leave zero rows / columns
    full_B[:, : B.shape[1]] = B
    return full_A, full_B


def _by_factors(layer, adapters, weights, kind, density, majority_sign_method, combination_type):
    """Combine the A's and the B's separately, each adapter's weight split as sqrt(|w s|) over both (sign on A)."""
    weights_A, weights_B, As, Bs = [], [], [], []
    for adapter, weight in zip(adapters, weights):
        factors = _factors(layer, adapter)
        if factors is None:
            continue
        scaled = weight * layer.scaling[adapter]
        root = math.sqrt(abs(scaled))
        weights_A.append(root if scaled >= 0 else -root)
        weights_B.append(root)
        As.append(factors[0].detach())
        Bs.append(factors[1].detach())
    if not As:
        raise _no_lora(layer)
    dtype = As[0].dtype
    out = []
    for tensors, w in ((As, weights_A), (Bs, weights_B)):
        w = torch.tensor(w).to(tensors[0].device)
        out.append(combine(tensors, w, kind, density, majority_sign_method, combination_type).to(dtype))
    return out


def _delta_rows(layer: LoraLayer, A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """s * B @ A as an (out, in) matrix: rows are B's outputs (conv kernels flattened into the columns)."""
    if A.dim() > 2:   # convolution: A (r, in, *kernel), B (out, r / groups, 1...)
        refusal = layer.merge_refusal()
        if refusal is not None:   # grouped conv: no dense delta to factorise
            raise refusal
        A, B = A.flatten(1), B.flatten(1)
    compute = A.dtype if A.dtype in (torch.float32, torch.float64) else torch.float32
    return (B.to(compute) @ A.to(compute)) * scaling


def _svd(layer, adapters, weights, kind, new_rank, new_A, new_B, density, majority_sign_method, clamp,
         full_matrices, driver, combination_type):
    deltas, used = [], []
    # Embedding and fan_in_fan_out deltas are combined in the base weight's (transposed) layout, as PEFT does:
    # dare's random masks are then drawn over the same elements in the same order, so a seed gives PEFT's result
    transposed = bool(getattr(layer, "fan_in_fan_out", False)) or _is_embedding(layer, adapters)
    for adapter, weight in zip(adapters, weights):
        factors = _factors(layer, adapter)
        if factors is not None:
            delta = _delta_rows(layer, factors[0].detach(), factors[1].detach(), layer.scaling[adapter])
            deltas.append(delta.T if transposed else delta)
            used.append(float(weight))
    if not deltas:
        raise _no_lora(layer)
    delta = combine(deltas, torch.tensor(used).to(deltas[0].device), kind, density, majority_sign_method,
                    combination_type)
    if transposed:
        delta = delta.T
    if delta.dtype not in (torch.float32, torch.float64):   # torch's svd needs float32/64
        delta = delta.float()
    U, S, Vh = torch.linalg.svd(delta, full_matrices=full_matrices, driver=driver)
    k = min(new_rank, S.shape[0])
    U = U[:, :k] @ torch.diag(S[:k])
    Vh = Vh[:k, :]
    if clamp is not None:
        hi = torch.quantile(torch.cat([U.flatten(), Vh.flatten()]), clamp)
        U, Vh = U.clamp(-hi, hi), Vh.clamp(-hi, hi)
    A = torch.zeros(new_rank, Vh.shape[1], dtype=Vh.dtype, device=Vh.device)
    B = torch.zeros(U.shape[0], new_rank, dtype=U.dtype, device=U.device)
    A[:k], B[:, :k] = Vh, U   # a rank above min(out, in) gets zero rows / columns
    return A.reshape(new_A.shape), B.reshape(new_B.shape)


# -- the entry point ------------------------------------------------------------------------------------
def add_weighted_adapter(tuner, adapters: list[str], weights: list[float], adapter_name: str,
                         combination_type: str = "svd", svd_rank: Optional[int] = None,
                         svd_clamp: Optional[float] = None, svd_full_matrices: bool = True,
                         svd_driver: Optional[str] = None, density: Optional[float] = None,
                         majority_sign_method: str = "total") -> None:
    """LoraModel.add_weighted_adapter (see the module's docstring); an existing adapter_name is left as it is."""
    if adapter_name in tuner.peft_config:
        return
    adapters = list(adapters)
    weights = list(weights)
    combination_type, new_rank, new_targets = check_arguments(tuner, adapters, weights, combination_type, svd_rank)
    config = dataclasses.replace(tuner.peft_config[adapters[0]], r=new_rank, lora_alpha=new_rank,
                                 target_modules=new_targets, alpha_pattern={}, rank_pattern={})
    _check_bias(tuner, config)
    tuner.add_frozen_adapter(adapter_name, config)   # as PEFT: the new adapter starts frozen

    try:
        _fill(tuner, adapters, weights, adapter_name, combination_type, new_rank, svd_clamp, svd_full_matrices,
              svd_driver, density, majority_sign_method)
    except Exception:
        tuner.delete_adapter(adapter_name)   # nothing half-made is left behind
        raise


@torch.no_grad()
def _fill(tuner, adapters, weights, adapter_name, combination_type, new_rank, svd_clamp, svd_full_matrices,
          svd_driver, density, majority_sign_method) -> None:
    for _, layer in list(adapter_layers(tuner.model)):
        if not isinstance(layer, LoraLayer):
            continue
        target = _factors(layer, adapter_name)
        if target is None:
            continue
        new_A, new_B = target
        if combination_type == "cat":
            A, B = _cat(layer, adapters, weights, new_A, new_B)
        elif combination_type in SVD_TYPES:
            kind = "linear" if combination_type == "svd" else combination_type[: -len("_svd")]
            A, B = _svd(layer, adapters, weights, kind, new_rank, new_A, new_B, density, majority_sign_method,
                        svd_clamp, svd_full_matrices, svd_driver, combination_type)
        else:
            A, B = _by_factors(layer, adapters, weights, combination_type, density, majority_sign_method,
                               combination_type)
        new_A.copy_(A)
        new_B.copy_(B)
