"""The projections vera_A (r, max_in) / vera_B (max_out, r) every VeRA layer of a model shares (SPEC.shared_state).

The first adapter draws them from `projection_prng_key` exactly as PEFT does (one CPU generator, vera_A first,
then vera_B, each kaiming-uniform with gain sqrt(2) over its second dimension), so an adapter PEFT saved with
save_projection=False rebuilds to the same tensors. The sizes are the largest (in, out) over the adapter's targets.
Later adapters reuse the first one's tensors (PEFT shares them the same way): they must use the same key,
save_projection and r, and their targets must fit the existing projections; anything else is refused here,
before the model changes.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...errors import PlanError
from ...graph.kinds import in_out_features
from ..spec import SharedState

NAMES = ("vera_A", "vera_B")
_FULL_PRECISION = (torch.float32, torch.float64)


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """U(-bound, bound), bound = sqrt(3) * sqrt(2) / sqrt(fan_in), fan_in = shape[1], drawn from `generator`."""
    std = math.sqrt(2) / math.sqrt(shape[1])
    bound = math.sqrt(3.0) * std
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def draw(r: int, max_in: int, max_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(vera_A, vera_B) for a seed, on the CPU in the default dtype."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    vera_A = kaiming_uniform((r, max_in), generator)
    vera_B = kaiming_uniform((max_out, r), generator)
    return vera_A, vera_B


def _base(model: nn.Module, path: str) -> nn.Module:
    module = model.get_submodule(path)
    return module.get_base_layer() if getattr(module, "_surgery_adapter_layer", False) else module


def _placed(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """On the targets' device, rounded through their dtype. A half-precision base ends in float32 (the values
    PEFT's move-to-base then autocast_adapter_dtype upcast give); the layers cast to their lambdas' dtype."""
    if like.device.type == "meta" or not like.is_floating_point():
        return tensor
    placed = tensor.to(device=like.device, dtype=like.dtype)
    return placed if like.dtype in _FULL_PRECISION else placed.float()


def _check_against(config, name: str, other) -> None:
    """PEFT's rules for adapters sharing one model's projections."""
    for key in ("projection_prng_key", "save_projection", "r"):
        mine, theirs = getattr(config, key), getattr(other, key)
        if mine != theirs:
            first = {"projection_prng_key": f"Vera PRNG initialisation key must be the same for all adapters. Got "
                                            f"config.projection_prng_key={mine!r} but previous config had {theirs!r}. ",
                     "save_projection": f"VeRA projection weights must be saved for all adapters or none, but got "
                                        f"multiple different values: {sorted({mine, theirs})}. "}.get(key, "")
            raise PlanError(f"{first}VeraConfig.{key} = {mine!r} differs from adapter {name!r}'s {theirs!r}: the VeRA "
                            f"adapters of one model share its vera_A/vera_B projections, so every adapter needs "
                            f"the same {key}; set {key}={theirs!r}")


def _reused(tuner, sizes: dict[str, tuple[int, int]]):
    """The projections an existing adapter holds ({name: tensor}), checked to fit the new targets, or None."""
    holder = tuner._modules.get(NAMES[0])
    owner = next(iter(holder.keys()), None) if holder is not None else None
    if owner is None:
        return None
    tensors = tuner.shared_tensors(owner, persistent_only=False)
    vera_A, vera_B = tensors["vera_A"], tensors["vera_B"]
    for path, (in_f, out_f) in sizes.items():
        if in_f > vera_A.shape[1] or out_f > vera_B.shape[0]:
            raise PlanError(f"{path} is {in_f} -> {out_f}, larger than the VeRA projections adapter {owner!r} "
                            f"created (vera_A {tuple(vera_A.shape)}, vera_B {tuple(vera_B.shape)}); add the "
                            f"adapter with the largest targets first (the projections are sized by the first one)")
    return tensors


def shared_state(model: nn.Module, plan, config, tuner) -> SharedState:
    sizes = {rw.path: in_out_features(_base(model, rw.path)) for rw in plan.rewrites}
    for other_name, other in tuner.peft_config.items():
        _check_against(config, other_name, other)
    reused = _reused(tuner, sizes)
    if reused is not None:
        return SharedState(reused, persistent=config.save_projection)
    if not sizes:
        raise PlanError("VeRA found no layer to adapt, so it cannot size its shared projections; check "
                        "target_modules")
    max_in = max(in_f for in_f, _ in sizes.values())
    max_out = max(out_f for _, out_f in sizes.values())
    vera_A, vera_B = draw(config.r, max_in, max_out, config.projection_prng_key)
    like = _base(model, plan.rewrites[0].path).weight
    return SharedState({"vera_A": _placed(vera_A, like), "vera_B": _placed(vera_B, like)},
                       persistent=config.save_projection)
