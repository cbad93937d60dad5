"""QuantBackend: what the adapter layers and the planner need to know about one quantized base type."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn


@dataclass(frozen=True)
class QuantBackend:
    name: str                                          # "bnb-4bit": plan tables and messages
    label: str                                         # "bitsandbytes.nn.Linear4bit": handler labels
    accepts: Callable[[nn.Module], bool]
    dequantize: Callable[[nn.Module], torch.Tensor]    # dense (out, in) weight
    requantize: Callable[[nn.Module, torch.Tensor], None]
    describe: Callable[[nn.Module], dict]              # {"format", "bits", "block_size", "double_quant", ...}
    weight_bytes: Callable[[nn.Module], int]           # the stored weight with its scales (meta modules too)
    compute_dtype: Callable[[nn.Module], torch.dtype]  # the dtype the base computes in (and dequantizes to)
    stored_numel: Optional[Callable[[torch.Tensor], Optional[int]]] = None
    # puts the weight back in the layout the library's training path needs (bitsandbytes repacks 4-bit weights
    # for its CPU inference kernel, which has no backward: training on them after an eval pass is wrong)
    ready_for_training: Optional[Callable[[nn.Module], None]] = None
