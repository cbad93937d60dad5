"""IA3Layer: a learned vector l per adapter that rescales a layer's output (or, for feed-forward layers, its
input), as PEFT's (IA)^3 layers do.

    output-scaled:   y = (W x + b) * l          l: one entry per output feature
    input-scaled:    y = W (x * l) + b          l: one entry per input feature ("feed-forward" targets)

Several active adapters multiply their vectors. Merging folds l into W (and, output-scaled, into b) in place;
unmerging divides by (l + 1e-8), PEFT's arithmetic, so it is exact only up to rounding. Whether a layer scales
its input is fixed by its first adapter, as in PEFT (later adapters on the layer follow it).
Subclasses give the vector's shape (`vector_shape`) and how it broadcasts over the weight (`weight_scale`).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from ...graph.kinds import in_out_features, is_conv1d
from ..base_layer import AdapterLayer

logger = logging.getLogger(__name__)
_UNMERGE_EPS = 1e-8   # PEFT divides by (l + 1e-8) to unmerge


class IA3Layer(AdapterLayer):
    adapter_layer_names = ("ia3_l",)
    repr_with_method = False   # PEFT prints its IA3 layers bare ("Linear("), its bitsandbytes ones as "ia3."

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self._modules["ia3_l"] = nn.ParameterDict()   # direct write, as in AdapterLayer.__init__
        self.ia3_l: nn.ParameterDict
        base = self.get_base_layer()
        in_f, out_f = in_out_features(base)
        self.__dict__.update(in_features=in_f, out_features=out_f, is_feedforward=None,
                             fan_in_fan_out=is_conv1d(base))
        self.in_features: int
        self.out_features: int
        self.is_feedforward: Optional[bool]
        self.fan_in_fan_out: bool

    # -- adding an adapter -----------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config, is_feedforward: bool = False) -> None:
        """Add (or replace) adapter `adapter_name`: ones (init_ia3_weights) or N(0, 1), PEFT's draws."""
        if self.is_feedforward is None:
            self.__dict__["is_feedforward"] = bool(is_feedforward)
        elif self.is_feedforward != bool(is_feedforward):
            logger.warning("%s scales its %s (fixed by its first adapter, as in PEFT); adapter %r follows it",
                           self._layer_name(), "input" if self.is_feedforward else "output", adapter_name)
        weight = self.get_base_layer().weight
        shape, dtype = self.vector_shape(), self.base_float_dtype()   # float32 on a quantized base, as PEFT
        if weight.device.type == "meta":
            vector = torch.empty(shape, device="meta", dtype=dtype)
        elif config.init_ia3_weights:
            vector = torch.ones(shape, device=weight.device, dtype=dtype)
        else:   # drawn in float32 on the CPU, then moved: the same numbers as PEFT for the same seed
            vector = torch.randn(shape).to(weight.device, dtype=dtype)
        self.ia3_l[adapter_name] = nn.Parameter(vector)
        self.mark_new_adapter(adapter_name, config)

    def vector_shape(self) -> tuple[int, ...]:
        """(1, in) for input scaling, (out, 1) for output scaling (nn.Linear / Conv1D); convs override."""
        return (1, self.in_features) if self.is_feedforward else (self.out_features, 1)

    def weight_scale(self, vector: torch.Tensor) -> torch.Tensor:
        """The vector shaped to broadcast over the base weight (rows or columns, in its layout)."""
        return vector.T if self.fan_in_fan_out else vector

    # -- forward ---------------------------------------------------------------------------------------
    def active_vector(self) -> Optional[torch.Tensor]:
        """The product of the active adapters' vectors (None when no adapter of this layer is active)."""
        params = self.ia3_l._parameters
        scale = None
        for name in self._active_adapters:
            vector = params.get(name)
            if vector is not None:
                scale = vector if scale is None else scale * vector
        return scale

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.runs_base_only():
            return self.base_layer(x, *args, **kwargs)
        scale = self.active_vector()
        if scale is None:
            return self.base_layer(x, *args, **kwargs)
        return self._scaled_forward(x, scale, *args, **kwargs)

    def _scaled_forward(self, x: torch.Tensor, scale: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """nn.Linear / Conv1D: the vector scales the last dimension, in the adapter's dtype (PEFT's casts)."""
        scale = scale.view(-1)
        if self.is_feedforward:
            return self.base_layer((x.to(scale.dtype) * scale).to(x.dtype), *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        return (result * scale).to(result.dtype)

    # -- merge -----------------------------------------------------------------------------------------
    def _to_merge(self, adapter_names: Optional[list[str]]) -> list[str]:
        return [n for n in (adapter_names or self._active_adapters)
                if n in self.ia3_l._parameters and n not in self.merged_adapters]

    def _bias_scale(self, name: str, bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """What the bias is multiplied by (output scaling only; None: the bias stays)."""
        if bias is None or self.is_feedforward:
            return None
        return self.ia3_l[name].detach().reshape(bias.shape)

    @torch.no_grad()
    def _scaled(self, weight: torch.Tensor, bias, name: str):
        """(weight, bias) with adapter `name` folded in, as new tensors in their own dtypes."""
        new_weight = torch.mul(weight, self.weight_scale(self.ia3_l[name].detach())).to(weight.dtype)
        bias_scale = self._bias_scale(name, bias)
        new_bias = None if bias_scale is None else torch.mul(bias, bias_scale).to(bias.dtype)
        return new_weight, new_bias

    @torch.no_grad()
    def check_merge(self, adapter_names: Optional[list[str]] = None) -> None:
        """Raise MergeError if a safe merge of these adapters would give NaN/inf; changes nothing."""
        base = self.get_base_layer()
        weight, bias = self.dense_base_weight(), base.bias.data if getattr(base, "bias", None) is not None else None
        for name in self._to_merge(adapter_names):
            new_weight, new_bias = self._scaled(weight, bias, name)
            self._refuse_non_finite(name, new_weight, new_bias)
            weight, bias = new_weight, bias if new_bias is None else new_bias

    def _refuse_non_finite(self, name: str, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        if not torch.isfinite(weight).all() or (bias is not None and not torch.isfinite(bias).all()):
            raise self._non_finite(name)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Fold l into W (and, output-scaled, b). W is the base's dense weight: the parameter itself, or a
        quantized base's dequantized copy, stored back requantized (AdapterLayer.store_base_weight)."""
        base = self.get_base_layer()
        for name in self._to_merge(adapter_names):
            bias = base.bias if getattr(base, "bias", None) is not None else None
            weight = self.dense_base_weight()
            if safe_merge:
                new_weight, new_bias = self._scaled(weight, None if bias is None else bias.data, name)
                self._refuse_non_finite(name, new_weight, new_bias)
                weight.copy_(new_weight)
                if new_bias is not None:
                    bias.data.copy_(new_bias)
            else:
                _times_(weight, self.weight_scale(self.ia3_l[name].detach()))
                bias_scale = self._bias_scale(name, bias)
                if bias_scale is not None:
                    _times_(bias, bias_scale)
            self.store_base_weight(weight)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        base = self.get_base_layer()
        bias = base.bias if getattr(base, "bias", None) is not None else None
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            weight = self.dense_base_weight()
            _times_(weight, self.weight_scale(self.ia3_l[name].detach()) + _UNMERGE_EPS, divide=True)
            self.store_base_weight(weight)
            bias_scale = self._bias_scale(name, bias)
            if bias_scale is not None:
                _times_(bias, bias_scale + _UNMERGE_EPS, divide=True)


def _times_(tensor: torch.Tensor, factor: torch.Tensor, divide: bool = False) -> None:
    """tensor *= factor (or /=), in place when the dtypes agree, else through the factor's dtype and back:
    the values PEFT's out-of-place `(W * l).to(W.dtype)` gives."""
    data = tensor.data
    if data.dtype == factor.dtype:
        data.div_(factor) if divide else data.mul_(factor)
    else:
        data.copy_((torch.div if divide else torch.mul)(data, factor))
