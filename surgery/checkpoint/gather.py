"""Sharded adapter tensors to whole ones before saving: FSDP2 (`fully_shard`) holds parameters as DTensors.

`DTensor.full_tensor()` is a collective: every rank must call it, in the same order, before rank 0 writes.
PeftModel.save_pretrained therefore gathers on every rank and returns on the others only afterwards.
"""
from __future__ import annotations

import torch


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except Exception:  # torch built without distributed support
        return None
    return DTensor


def is_sharded(tensors: dict[str, torch.Tensor]) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and any(isinstance(v, dtensor) for v in tensors.values())


def full_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{key: whole tensor}; DTensors are gathered (collective, in key order), plain tensors pass through."""
    dtensor = _dtensor_type()
    if dtensor is None:
        return tensors
    return {k: (v.full_tensor() if isinstance(v, dtensor) else v) for k, v in tensors.items()}
