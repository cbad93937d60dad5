"""Initialisers for a new LoRA adapter (strategy objects keyed by `init_lora_weights`).

    True        A ~ kaiming-uniform(a=sqrt(5)) (nn.Linear's default), B = 0   -> starts as the identity
    "gaussian"  A ~ N(0, 1/r),                                         B = 0   -> starts as the identity
    False       both keep torch's default init (B != 0): a no-op init, for tests and debugging
Embeddings swap the roles (A = 0, B ~ N(0, 1)), as in the LoRA paper's reference code.
"""
from __future__ import annotations

import math

from torch import nn


def _kaiming(weight, r):
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def _gaussian(weight, r):
    nn.init.normal_(weight, std=1 / r)


_A_INIT = {True: _kaiming, "gaussian": _gaussian}


def init_linear_like(init, lora_A: nn.Module, lora_B: nn.Module, r: int) -> None:
    """Initialise a Linear/Conv pair of LoRA factors in place."""
    if init is False:
        return
    _A_INIT[init](lora_A.weight, r)
    nn.init.zeros_(lora_B.weight)
    if getattr(lora_B, "bias", None) is not None:
        nn.init.zeros_(lora_B.bias)


def init_embedding(init, weight_A: nn.Parameter, weight_B: nn.Parameter) -> None:
    if init is False:
        return
    nn.init.zeros_(weight_A)
    nn.init.normal_(weight_B)
