"""HRA for nn.Linear: the reflections act on the input, y = (x H^T) W^T + b, two thin GEMMs per adapter
(x - ((x V) T^T) V^T) instead of PEFT's dense n x n product W H. As PEFT, the base weight takes no gradient
through this path (W is frozen), the bias does (bias="hra_only")."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layer import HRALayer
from .reflections import times


class HRALinear(HRALayer):
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self._base_output(x, args, kwargs)
        if result is not None:
            return result
        active = self.active_here()
        dtype = self.hra_u[active[0]].dtype
        flat = x.reshape(-1, x.shape[-1]).to(dtype)
        for name in reversed(active):          # x (H_1 H_2 ...)^T = x ... H_2^T H_1^T
            flat = times(flat, self.reflections(name), transposed=True)
        base = self.get_base_layer()
        bias = base.bias.to(dtype) if base.bias is not None else None
        out = F.linear(flat, base.weight.detach().to(dtype), bias)
        return out.view(*x.shape[:-1], out.shape[-1]).to(x.dtype)
