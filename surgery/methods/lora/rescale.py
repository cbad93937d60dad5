"""rescale_adapter_scale: LoRA's scalings multiplied for the duration of a `with` block (PEFT's helper).

    y = W x + (m * s) B A x     inside the block;  y = W x + s B A x  again after it

With m in [0, 1] this is WiSE-FT's interpolation between the base and the fine-tuned model (peft#1940).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Union

from torch import nn

from .layer import LoraLayer


@contextmanager
def rescale_adapter_scale(model: nn.Module, multiplier: Union[float, int]) -> Iterator[None]:
    if isinstance(multiplier, bool) or not isinstance(multiplier, (float, int)):
        raise TypeError(f"Argument multiplier should be of type float, got {type(multiplier)}")
    original = {}
    for module in model.modules():
        if isinstance(module, LoraLayer):
            original[module] = module.scaling
            module.scaling = {name: value * multiplier for name, value in module.scaling.items()}
    if not original:
        raise ValueError("scaling is only supported for models with `LoraLayer`s")
    try:
        yield
    finally:
        for module, scaling in original.items():
            module.scaling = scaling
