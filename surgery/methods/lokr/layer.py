"""LoKrLayer: the LoKr factors of one wrapped layer (shapes from factorization.py), their init and ΔW.

    W1: lokr_w1 (a, c), or lokr_w1_a (a, r) @ lokr_w1_b (r, c)
    W2: lokr_w2 (b, d[, kernel]), or lokr_w2_a (b, r) @ lokr_w2_b (r, d * prod(kernel)),
        or CP: lokr_t2 (r, r, kh, kw) (Conv1d: (r, r, k, 1)) with lokr_w2_a (r, b), lokr_w2_b (r, d)

init_weights=True: W1 (or A1) = 0, the rest kaiming-uniform(a=sqrt(5)); "lycoris": W2 (or B2) = 0, the rest
kaiming; False: everything kaiming. Either way ΔW = 0 at the start except for False. Factors are made and
initialised as PEFT makes them (float32 on the CPU, in PEFT's order), so a seeded run starts from PEFT's values.
The rank-dropout mask is float32 and divided by its mean only with rank_dropout_scale (PEFT's LoKr).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..base_layer import lazy_container
from ..lycoris.layer import LycorisLayer
from .factorization import KronLayout, kron_layout
from .kron import kron_add_, kron_delta, rebuild_cp


def _kaiming(param: nn.Parameter) -> None:
    nn.init.kaiming_uniform_(param, a=math.sqrt(5))


def _shapes(layout: KronLayout, r: int) -> dict[str, tuple]:
    a, b, c, d, k = layout.a, layout.b, layout.c, layout.d, layout.kernel
    shapes = {"lokr_w1": (a, c)} if layout.full_w1 else {"lokr_w1_a": (a, r), "lokr_w1_b": (r, c)}
    if layout.full_w2:
        shapes["lokr_w2"] = (b, d, *k)
    elif layout.cp:
        shapes.update(lokr_t2=(r, r, *k) if len(k) == 2 else (r, r, k[0], 1), lokr_w2_a=(r, b), lokr_w2_b=(r, d))
    else:
        shapes.update(lokr_w2_a=(b, r), lokr_w2_b=(r, d * math.prod(k)))
    return shapes


# Which factor starts at zero, per init_weights (PEFT's three initialisations); None: none does.
_ZERO = {True: ("lokr_w1", "lokr_w1_a"), "lycoris": ("lokr_w2", "lokr_w2_b"), False: ()}
_INIT_ORDER = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


class LoKrLayer(LycorisLayer):
    adapter_layer_names = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
    rank_mask_float32 = True
    # which containers a layer fills depends on its shapes: each is created on first use
    lokr_w1 = lazy_container("lokr_w1", nn.ParameterDict)
    lokr_w1_a = lazy_container("lokr_w1_a", nn.ParameterDict)
    lokr_w1_b = lazy_container("lokr_w1_b", nn.ParameterDict)
    lokr_w2 = lazy_container("lokr_w2", nn.ParameterDict)
    lokr_w2_a = lazy_container("lokr_w2_a", nn.ParameterDict)
    lokr_w2_b = lazy_container("lokr_w2_b", nn.ParameterDict)
    lokr_t2 = lazy_container("lokr_t2", nn.ParameterDict)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.__dict__["layouts"] = {}
        self.layouts: dict[str, KronLayout]

    def _create_factors(self, adapter_name: str, r: int, config, kron: Optional[str] = None,
                        cp: Optional[bool] = None) -> None:
        """`kron` and `cp` are the plan's description of the shapes (for its audit table): the shapes are
        derived from the base here, with the function the plan used (factorization.kron_layout)."""
        layout = self.layouts[adapter_name] = kron_layout(self.get_base_layer(), r, config)
        kwargs = self.factor_kwargs()
        shapes = _shapes(layout, r)
        for name, shape in shapes.items():
            getattr(self, name)[adapter_name] = nn.Parameter(torch.empty(shape, **kwargs))
        if kwargs["device"].type != "meta":
            with torch.no_grad():
                for name in _INIT_ORDER:   # PEFT's order (the RNG stream)
                    if name in shapes:
                        param = getattr(self, name)[adapter_name]
                        nn.init.zeros_(param) if name in _ZERO[config.init_weights] else _kaiming(param)
        self.finish_factors(adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.layouts.pop(adapter_name, None)

    # -- the two factors ---------------------------------------------------------------------------------
    def w1(self, name: str) -> torch.Tensor:
        if self.layouts[name].full_w1:
            return self.lokr_w1[name]
        return self.lokr_w1_a[name] @ self.lokr_w1_b[name]

    def w2(self, name: str) -> torch.Tensor:
        layout = self.layouts[name]
        if layout.full_w2:
            return self.lokr_w2[name]
        if layout.cp:
            return rebuild_cp(self.lokr_t2[name], self.lokr_w2_a[name], self.lokr_w2_b[name])
        return self.lokr_w2_a[name] @ self.lokr_w2_b[name]

    def delta_weight(self, name: str) -> torch.Tensor:
        weight = kron_delta(self.w1(name), self.w2(name), self.scaling[name])
        return weight.reshape(self.get_base_layer().weight.shape)

    def add_delta_(self, weight: torch.Tensor, name: str, sign: int) -> torch.Tensor:
        layout = self.layouts[name]
        if (layout.kernel and (layout.full_w2 or layout.cp)) or not weight.is_contiguous():
            return super().add_delta_(weight, name, sign)   # a 3/4-d W2: torch.kron's own layout
        with torch.no_grad():
            return kron_add_(weight, self.w1(name), self.w2(name), self.scaling[name], sign)

    def _delta_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        delta = self.masked_delta(name)
        return self.apply_delta(self._cast_input_dtype(x, delta.dtype), delta)

    def apply_delta(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
