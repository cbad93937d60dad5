"""ParamWrapper: LoRA on one nn.Parameter of a module (LoraConfig.target_parameters), PEFT's layer of that name.

For the fused 3-D expert weights of MoE layers (no Linear to wrap), and for any 2-D parameter. The layer wraps
the module holding the parameter; while it runs, the module reads the adapted weight for the parameter:

    module.<param>  ->  W' = W + sum over active adapters of s B A   (per expert for 3-D; see param_delta.py)

W' is built once per forward, on the module's first read (one fused op per adapter, or PEFT's rounded-delta sum
for float32 factors on a half-precision W: param_delta.py), and only the module's reads see it (param_shadow.py):
state_dict, .parameters() and optimizers keep the untouched parameter.
Nothing is registered or re-classed (PEFT's parametrize path swaps the module's class twice per forward).

Several parameters of one module: one layer each, stacked (the outer one's base_layer is the inner one), so state
dict keys are PEFT's (<path>.lora_A..., <path>.base_layer.lora_A...). Dropout, DoRA, lora_bias and
fan_in_fan_out do not apply (x cannot be factored out of W x for a parameter), as in PEFT.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...errors import ConfigError, MergeError, PlanError
from .init import init_linear_like
from .layer import _NO_DROPOUT, LoraLayer, uninitialised_linear
from .param_delta import adapted_weight, delta_as_weight, layout
from .param_options import option_refusal
from .param_shadow import shadowed


class ParamWrapper(LoraLayer):
    _surgery_parameter_layer = True   # adapts one parameter of its base (plan/parameters.py finds it by this)

    def __init__(self, base_layer: nn.Module, parameter_name: str):
        super().__init__(base_layer)
        base = self.get_base_layer()
        shape = tuple(getattr(base, parameter_name).shape)
        experts, in_f, out_f, swapped = layout(shape, getattr(base, "is_transposed", False))
        # PEFT's attribute names (num_experts, _did_swap_in_out_features: stored (E, out, in))
        self.__dict__.update(parameter_name=parameter_name, num_experts=experts, in_features=in_f,
                             out_features=out_f, fan_in_fan_out=False, _did_swap_in_out_features=swapped,
                             _param_ndim=len(shape))

    # -- the parameter ---------------------------------------------------------------------------------
    def get_param(self) -> torch.Tensor:
        """The parameter as the module reads it (PEFT's name)."""
        return getattr(self.get_base_layer(), self.parameter_name)

    def _stored(self) -> torch.Tensor:
        """The tensor a merge writes: the parameter, or under a parametrization its stored original."""
        base = self.get_base_layer()
        if parametrize.is_parametrized(base, self.parameter_name):
            return base.parametrizations[self.parameter_name].original
        return base._parameters[self.parameter_name]

    def in_out_features(self) -> tuple[int, int]:
        return self.in_features, self.out_features

    def base_float_dtype(self) -> torch.dtype:
        dtype = self.get_param().dtype
        return dtype if dtype.is_floating_point else torch.get_default_dtype()

    def dense_base_weight(self) -> torch.Tensor:
        return self._stored().data

    def store_base_weight(self, weight: torch.Tensor) -> None:
        stored = self._stored()
        if weight.data_ptr() != stored.data_ptr() or weight.dtype != stored.dtype:
            stored.data = weight

    # -- adding an adapter -----------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config, r: int, lora_alpha: float, scaling: Optional[float] = None,
                     use_dora: Optional[bool] = None) -> None:
        """Add adapter `adapter_name`: A (r E, in), B (out, r E), PEFT's layout (param_delta.py)."""
        _refuse_direct(self, config, r)
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        if scaling is None:
            scaling = lora_alpha / math.sqrt(r) if config.use_rslora else lora_alpha / r
        self.scaling[adapter_name] = self.initial_scaling[adapter_name] = scaling
        self.lora_dropout._modules[adapter_name] = _NO_DROPOUT
        self.use_dora[adapter_name] = False
        param = self.get_param()
        device, dtype, rank = param.device, self.base_float_dtype(), r * self.num_experts
        lora_A = self.lora_A._modules[adapter_name] = uninitialised_linear(self.in_features, rank, False, device, dtype)
        lora_B = self.lora_B._modules[adapter_name] = uninitialised_linear(rank, self.out_features, False, device, dtype)
        if device.type != "meta":
            init_linear_like(config.init_lora_weights, lora_A, lora_B, r)
        self.mark_new_adapter(adapter_name, config)

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if getattr(self, "_batch_adapters", None) is not None:   # PEFT's words first
            raise ConfigError(f"lora.ParamWrapper does not support mixed adapter batches yet. ({self._layer_name()} "
                              f"adapts a parameter, not a module: adapter_names= needs every adapted layer to mix "
                              f"adapters per sample; run one adapter at a time with set_adapter)")
        if self.runs_base_only():
            return self.base_layer(x, *args, **kwargs)
        names = [n for n in self._active_adapters if n in self.r]
        if not names:
            return self.base_layer(x, *args, **kwargs)
        with self.adapted_parameter(names):
            return self.base_layer(x, *args, **kwargs)

    def adapted_parameter(self, names: list[str]):
        """A context: inside it the module reads W' (these adapters folded in) for the parameter (param_shadow.py)."""
        terms = [(self.lora_A[n].weight, self.lora_B[n].weight, self.scaling[n]) for n in names]
        experts, swapped = self.num_experts, self._did_swap_in_out_features
        return shadowed(self.get_base_layer(), self.parameter_name,
                        lambda weight: adapted_weight(weight, terms, experts, swapped))

    # -- merge -----------------------------------------------------------------------------------------
    def delta_weight(self, name: str) -> torch.Tensor:
        """s B A per expert, in the parameter's layout and dtype (PEFT's get_delta_weight)."""
        return delta_as_weight(self.lora_A[name].weight, self.lora_B[name].weight, self.num_experts,
                               self._did_swap_in_out_features, self.scaling[name], self.get_param())

    def merge_refusal(self) -> Optional[MergeError]:
        if parametrize.is_parametrized(self.get_base_layer(), self.parameter_name):
            return MergeError(f"{self._layer_name()} is parametrized (torch.nn.utils.parametrize): the module computes "
                              f"its weight from the stored one, so the LoRA delta cannot be folded into it; run "
                              f"unmerged, or unload() without merging")
        return None

    # -- names -----------------------------------------------------------------------------------------
    def _layer_name(self) -> str:
        return f"{getattr(self, '_surgery_fqn', type(self.get_base_layer()).__name__)}.{self.parameter_name}"

    def extra_repr(self) -> str:
        return f"parameter_name={self.parameter_name!r}, {super().extra_repr()}"


def _refuse_direct(layer: ParamWrapper, config, r: int) -> None:
    """The plan refuses these first (param_spec.py); update_layer called directly checks them too."""
    if r <= 0:
        raise PlanError(f"`r` should be a positive integer value but the value passed is {r}")
    reason = option_refusal(config, layer._layer_name())
    if reason:
        raise PlanError(reason)
