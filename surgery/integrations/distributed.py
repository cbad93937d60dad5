"""torch.distributed with surgery models: DDP and FSDP2 (`torch.distributed.fsdp.fully_shard`).

DDP needs nothing from surgery: wrap the PeftModel in DistributedDataParallel; only the adapters require grad,
so only they are all-reduced. Save from the unwrapped model with `is_main_process=(rank == 0)`.

FSDP2 shards every parameter as a DTensor. `shard_model` applies `fully_shard` to each transformer block (the
model's `_no_split_modules`, or a class list you pass) and then to the root; frozen base weights and trainable
adapters share the blocks' parameter groups. `save_pretrained` must then run on *every* rank: it gathers the
adapter shards (a collective) and only the main process writes.

    model = shard_model(get_peft_model(base, config))          # FSDP2
    model = DistributedDataParallel(get_peft_model(base, config))  # or DDP
    ...
    unwrap(model).save_pretrained(out, is_main_process=is_main_process())
"""
from __future__ import annotations

import logging
from typing import Iterable, Optional

import torch
from torch import nn

from ..checkpoint.gather import full_tensors
from ..checkpoint.state import get_peft_model_state_dict

logger = logging.getLogger(__name__)


def is_main_process() -> bool:
    """True outside torch.distributed, else on global rank 0."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The PeftModel inside DDP (`.module`) and/or torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _block_classes(model: nn.Module, classes: Optional[Iterable[str]]) -> set[str]:
    if classes is not None:
        return set(classes)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"{type(base).__name__} names no transformer blocks (_no_split_modules); pass "
                         f"block_classes=[...] (class names of the modules to shard one by one)")
    return names


def shard_model(model: nn.Module, mesh=None, block_classes: Optional[Iterable[str]] = None,
                **fully_shard_kwargs) -> nn.Module:
    """FSDP2 over a PeftModel: fully_shard each block, then the root. Returns the same (now sharded) model."""
    from torch.distributed.fsdp import fully_shard

    names = _block_classes(model, block_classes)
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"no module of class {sorted(names)} in the model; pass block_classes=[...]")
    for block in blocks:
        fully_shard(block, mesh=mesh, **fully_shard_kwargs)
    fully_shard(model, mesh=mesh, **fully_shard_kwargs)
    logger.info("FSDP2: sharded %d blocks of %s and the root", len(blocks), sorted(names))
    return model


def adapter_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's checkpoint keys, whole on every rank (a collective under FSDP2)."""
    return full_tensors(get_peft_model_state_dict(unwrap(model), adapter_name=adapter_name))
