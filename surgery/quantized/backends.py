"""The quantized base types surgery knows, as a table of backends.

A backend answers, for one quantized module type: does it accept this module, what is its weight as a dense
(out, in) matrix (`dequantize`), how to store a new dense weight in the same format (`requantize`: what a merge
does), what one row of `surgery plan` says about it (`describe`), and how many parameters PEFT counts for a
stored tensor (4-bit packs two values per byte: PEFT counts the unpacked number).

Nothing here imports bitsandbytes or torchao unless the model already did: a module can only be one of their
types if the library is loaded (bitsandbytes: `sys.modules`; torchao: the weight's class), so models without
quantization pay nothing.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .backend import QuantBackend
from .bnb import BNB_4BIT, BNB_8BIT
from .torchao import TORCHAO

BACKENDS: tuple[QuantBackend, ...] = (BNB_4BIT, BNB_8BIT, TORCHAO)


def backend_of(module: nn.Module) -> Optional[QuantBackend]:
    """The backend of a quantized base module, or None for a plain one."""
    for backend in BACKENDS:
        if backend.accepts(module):
            return backend
    return None


def describe(module: nn.Module) -> Optional[dict]:
    """What the plan shows about a quantized base module (None: not quantized)."""
    backend = backend_of(module)
    return None if backend is None else {"backend": backend.name, **backend.describe(module)}


def stored_numel(param: torch.Tensor) -> int:
    """The parameter count PEFT reports for `param` (print_trainable_parameters' figures)."""
    for backend in BACKENDS:
        if backend.stored_numel is not None:
            count = backend.stored_numel(param)
            if count is not None:
                return count
    return param.numel()


def ready_for_training(module: nn.Module) -> None:
    """Before a training forward through a quantized base: undo what its library did for inference that its
    training path cannot use (see QuantBackend.ready_for_training); nothing for a plain module."""
    backend = backend_of(module)
    if backend is not None and backend.ready_for_training is not None:
        backend.ready_for_training(module)
