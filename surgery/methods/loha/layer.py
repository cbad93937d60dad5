"""LoHaLayer: the LoHa factors of one wrapped layer, their initialisation and ΔW.

    Linear        hada_w1_a, hada_w2_a: (out, r)   hada_w1_b, hada_w2_b: (r, in)
    Conv (flat)   hada_w1_a, hada_w2_a: (out, r)   hada_w1_b, hada_w2_b: (r, in / groups * prod(kernel))
    Conv (CP)     hada_t1, hada_t2: (r, r, kh, kw) (Conv1d: (r, r, k, 1))
                  hada_w1_a, hada_w2_a: (r, out)   hada_w1_b, hada_w2_b: (r, in / groups)

init_weights=True: W1a, W1b, W2a (and T1, T2) kaiming-uniform(a=sqrt(5)), W2b = 0, so ΔW starts at 0 (FedPara's
He init); False: W2b random too. Factors are made and initialised as PEFT makes them (float32 on the CPU, in
PEFT's order), so a seeded run starts from PEFT's values.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..base_layer import lazy_container
from ..lycoris.conv import in_per_group, kernel, kernel_numel, uses_cp
from ..lycoris.layer import LycorisLayer
from .hadamard import hadamard_add_, hadamard_delta, hadamard_delta_cp

_FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


def _kaiming(param: nn.Parameter) -> None:
    nn.init.kaiming_uniform_(param, a=math.sqrt(5))


class LoHaLayer(LycorisLayer):
    adapter_layer_names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
    hada_t1 = lazy_container("hada_t1", nn.ParameterDict)   # CP cores: effective conv2d only
    hada_t2 = lazy_container("hada_t2", nn.ParameterDict)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        for name in _FACTORS:
            self._modules[name] = nn.ParameterDict()   # direct writes, as in AdapterLayer.__init__
        self.hada_w1_a: nn.ParameterDict
        self.hada_w1_b: nn.ParameterDict
        self.hada_w2_a: nn.ParameterDict
        self.hada_w2_b: nn.ParameterDict

    def _create_factors(self, adapter_name: str, r: int, config, cp: Optional[bool] = None) -> None:
        base = self.get_base_layer()
        cp = uses_cp(base, config) if cp is None else cp
        kwargs = self.factor_kwargs()
        out_f, in_f = base.out_channels if kernel(base) else base.out_features, in_per_group(base)
        if cp:
            k = kernel(base)
            core = (r, r, *k) if len(k) == 2 else (r, r, k[0], 1)
            shapes = {"hada_w1_a": (r, out_f), "hada_w1_b": (r, in_f), "hada_w2_a": (r, out_f),
                      "hada_w2_b": (r, in_f), "hada_t1": core, "hada_t2": core}
        else:
            flat_in = in_f * kernel_numel(base)
            shapes = {"hada_w1_a": (out_f, r), "hada_w1_b": (r, flat_in), "hada_w2_a": (out_f, r),
                      "hada_w2_b": (r, flat_in)}
        for name, shape in shapes.items():
            getattr(self, name)[adapter_name] = nn.Parameter(torch.empty(shape, **kwargs))
        if kwargs["device"].type != "meta":
            self._init_factors(adapter_name, config.init_weights, cp)
        self.finish_factors(adapter_name)

    @torch.no_grad()
    def _init_factors(self, name: str, init_weights: bool, cp: bool) -> None:
        # PEFT's order (the RNG stream): w1_a, w1_b, w2_a, w2_b, then the CP cores
        for container in _FACTORS:
            param = getattr(self, container)[name]
            if container == "hada_w2_b" and init_weights:
                nn.init.zeros_(param)
            else:
                _kaiming(param)
        if cp:
            _kaiming(self.hada_t1[name])
            _kaiming(self.hada_t2[name])

    def is_cp(self, name: str) -> bool:
        holder = self._modules.get("hada_t1")
        return holder is not None and name in holder

    def delta_weight(self, name: str) -> torch.Tensor:
        scale = self.scaling[name]
        w1a, w1b, w2a, w2b = (getattr(self, c)[name] for c in _FACTORS)
        if self.is_cp(name):
            weight = hadamard_delta_cp(self.hada_t1[name], w1a, w1b, self.hada_t2[name], w2a, w2b, scale)
        else:
            weight = hadamard_delta(w1a, w1b, w2a, w2b, scale)
        return weight.reshape(self.get_base_layer().weight.shape)

    def add_delta_(self, weight: torch.Tensor, name: str, sign: int) -> torch.Tensor:
        if self.is_cp(name):
            return super().add_delta_(weight, name, sign)
        w1a, w1b, w2a, w2b = (getattr(self, c)[name] for c in _FACTORS)
        return hadamard_add_(weight, w1a, w1b, w2a, w2b, self.scaling[name], sign)

    def _delta_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        delta = self.masked_delta(name)
        return self.apply_delta(self._cast_input_dtype(x, delta.dtype), delta)

    def apply_delta(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
