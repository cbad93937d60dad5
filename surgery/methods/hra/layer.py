"""HRALayer: what the Linear and Conv2d HRA layers share: the vectors hra_u (n, r) per adapter, PEFT's init,
and the merge (the weight flattened to (out, n), times H; unmerge: times H^T).

    init_weights=True, r even   u = [c_1 c_1 c_2 c_2 ...], c_j kaiming-uniform(a=sqrt(5)) over (n, r/2):
                                equal neighbours cancel (R R = I), so the adapter starts as the identity
    r odd, or init_weights=False  kaiming-uniform over (n, r): a random orthogonal H (not the identity)

The draws are PEFT's (CPU, default dtype, then moved to the base weight), so a seed gives PEFT's vectors.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ...graph.kinds import in_out_features
from ..base_layer import AdapterLayer
from ..vera.weight_merge import WeightMerge
from .reflections import Reflections, dense, reflections, times


def initial_vectors(n: int, r: int, symmetric: bool) -> torch.Tensor:
    if symmetric and r % 2 == 0:
        half = torch.zeros(n, r // 2)
        nn.init.kaiming_uniform_(half, a=math.sqrt(5))
        return torch.repeat_interleave(half, 2, dim=1)
    u = torch.empty(n, r)
    nn.init.kaiming_uniform_(u, a=math.sqrt(5))
    return u


class HRALayer(WeightMerge, AdapterLayer):
    adapter_layer_names = ("hra_u",)
    other_param_names = ("hra_r", "hra_apply_GS")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self._modules["hra_u"] = nn.ParameterDict()   # direct write, as in AdapterLayer.__init__
        self.hra_u: nn.ParameterDict
        in_f, out_f = in_out_features(self.get_base_layer())
        self.__dict__.update(in_features=in_f, out_features=out_f, hra_r={}, hra_apply_GS={})
        self.hra_r: dict[str, int]
        self.hra_apply_GS: dict[str, bool]

    def reflection_size(self) -> int:
        """n: the length of each reflection vector (the flattened weight's columns)."""
        return self.in_features

    def update_layer(self, adapter_name: str, config, r: int, apply_GS: Optional[bool] = None) -> None:
        self.hra_r[adapter_name] = r
        self.hra_apply_GS[adapter_name] = bool(config.apply_GS if apply_GS is None else apply_GS)
        u = initial_vectors(self.reflection_size(), r, symmetric=config.init_weights)
        weight = self.get_base_layer().weight
        if weight.is_floating_point():
            u = u.to(device=weight.device, dtype=weight.dtype)
        self.hra_u[adapter_name] = nn.Parameter(u)
        self.mark_new_adapter(adapter_name, config)

    def active_here(self) -> list[str]:
        return [name for name in self._active_adapters if name in self.hra_r]

    def reflections(self, name: str) -> Reflections:
        return reflections(self.hra_u[name], self.hra_apply_GS[name])

    def get_delta_weight(self, adapter_name: str, reverse: bool = False) -> torch.Tensor:
        """PEFT's name: the dense H (H^T when reverse), (n, n). For inspection; the layers never build it."""
        H = dense(self.reflections(adapter_name))
        return H.T if reverse else H

    def merged_weight(self, weight: torch.Tensor, name: str, sign: int) -> torch.Tensor:
        """W H (sign +1) or W H^T (sign -1), computed in the adapter's dtype, as a new tensor."""
        refl = self.reflections(name)
        flat = weight.reshape(weight.shape[0], -1).to(refl.V.dtype)
        return times(flat, refl, transposed=sign < 0).to(weight.dtype).view(weight.shape)

    def _base_output(self, x: torch.Tensor, args, kwargs) -> Optional[torch.Tensor]:
        """The base layer's output where no adapter runs here (disabled, merged, none active), else None."""
        if self.runs_base_only() or not self.active_here():
            return self.base_layer(x, *args, **kwargs)
        return None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.hra_r}, apply_GS={self.hra_apply_GS}"
