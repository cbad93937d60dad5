"""HRA for nn.Conv2d: the reflections fold into the weight flattened to (out, in*k*k), W H = W - ((W V) T) V^T
(thin GEMMs, no dense n x n H), then one conv with the base's geometry. The spec accepts only the convs PEFT
computes exactly (square kernel, groups 1, no dilation, equal stride/padding on both axes, zero padding)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layer import HRALayer
from .reflections import times


class HRAConv2d(HRALayer):
    def reflection_size(self) -> int:
        base = self.get_base_layer()
        return self.in_features * base.kernel_size[0] * base.kernel_size[0]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self._base_output(x, args, kwargs)
        if result is not None:
            return result
        active = self.active_here()
        dtype = self.hra_u[active[0]].dtype
        base = self.get_base_layer()
        weight = base.weight.detach()
        flat = weight.reshape(weight.shape[0], -1).to(dtype)
        for name in active:                    # W H_1 H_2 ...
            flat = times(flat, self.reflections(name))
        bias = base.bias.to(dtype) if base.bias is not None else None
        out = F.conv2d(x.to(dtype), flat.view(weight.shape), bias, stride=base.stride, padding=base.padding,
                       dilation=base.dilation, groups=base.groups)
        return out.to(x.dtype)
