"""VeRA for nn.Linear and transformers' Conv1D (weight stored (in, out): fan_in_fan_out).

    x ──► base_layer ─────────────────────────────────────────────► (+) ──► y
     └──► dropout ──► A = vera_A[:, :in] ──► × λ_d ──► Λ_b B ───────┘      Λ_b B = vera_B[:out] scaled by row

The projections are the tuner's (`vera_A` / `vera_B`: {adapter: tensor}, shared by every layer and read when
the layer runs); the layer owns only the scaling vectors. One active adapter on a plain base runs as one
autograd node with the base matmul (fused.py); otherwise the adapter's output is one node (delta.py).
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import PlanError
from ...graph.kinds import in_out_features, is_conv1d
from ...quantized import ready_for_training
from ..base_layer import AdapterLayer
from .delta import vera_output
from .fused import fused_forward
from .weight_merge import WeightMerge

_NO_DROPOUT = nn.Identity()   # stateless: one instance serves every adapter without dropout


class Linear(WeightMerge, AdapterLayer):
    adapter_layer_names = ("vera_lambda_b", "vera_lambda_d")
    other_param_names = ("r", "vera_dropout")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        base = self.get_base_layer()
        in_f, out_f = in_out_features(base)
        modules = self._modules   # direct writes, as in AdapterLayer.__init__
        modules["vera_lambda_b"], modules["vera_lambda_d"] = nn.ParameterDict(), nn.ParameterDict()
        modules["vera_dropout"] = nn.ModuleDict()
        self.vera_lambda_b: nn.ParameterDict
        self.vera_lambda_d: nn.ParameterDict
        self.vera_dropout: nn.ModuleDict
        # vera_A / vera_B: the tuner's holders, set by update_layer (not submodules: not this layer's state)
        self.__dict__.update(in_features=in_f, out_features=out_f, fan_in_fan_out=is_conv1d(base), r={},
                             vera_A=None, vera_B=None)
        self.r: dict[str, int]

    # -- adding an adapter -----------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config, r: int, shared: dict) -> None:
        """Add adapter `adapter_name` (rank r); `shared` holds the tuner's projection holders."""
        vera_A, vera_B = shared["vera_A"], shared["vera_B"]
        a_rows, a_cols = vera_A[adapter_name].shape
        b_rows = vera_B[adapter_name].shape[0]
        if a_rows != r or a_cols < self.in_features or b_rows < self.out_features:
            raise PlanError(f"the shared VeRA projections (vera_A {a_rows}x{a_cols}, vera_B rows {b_rows}) do not "
                            f"fit this {self.in_features} -> {self.out_features} layer at rank {r}")
        self.__dict__.update(vera_A=vera_A, vera_B=vera_B)
        self.r[adapter_name] = r
        p = config.vera_dropout
        self.vera_dropout._modules[adapter_name] = nn.Dropout(p=p) if p > 0 else _NO_DROPOUT
        # PEFT's draws, in its order (randn consumes the global generator even when overwritten below)
        lambda_b, lambda_d = torch.ones(self.out_features), torch.randn(r)
        if config.init_weights:
            lambda_b.zero_()
            lambda_d.fill_(config.d_initial)
        weight = self.get_base_layer().weight
        kwargs = dict(device=weight.device, dtype=weight.dtype) if weight.is_floating_point() else {}
        self.vera_lambda_b[adapter_name] = nn.Parameter(lambda_b.to(**kwargs))
        self.vera_lambda_d[adapter_name] = nn.Parameter(lambda_d.to(**kwargs))
        self.mark_new_adapter(adapter_name, config)

    def projections(self, name: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's slices (A (r, in), B (out, r)) of the shared projections, on `like`'s device and dtype."""
        A = self.vera_A[name][:, : self.in_features]
        B = self.vera_B[name][: self.out_features]
        return A.to(device=like.device, dtype=like.dtype), B.to(device=like.device, dtype=like.dtype)

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.training:   # a quantized base repacked by an eval pass cannot be trained through (bitsandbytes)
            ready_for_training(self.get_base_layer())
        if not args and not kwargs:
            out = fused_forward(self, x)     # one adapter on a plain base: base + adapter in one node
            if out is not None:
                return out
        if self.runs_base_only():
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        out_dtype = result.dtype
        for name in self._active_adapters:
            if name in self.r:
                result = self._add_adapter(x, name, result)
        return result.to(out_dtype)

    def _add_adapter(self, x: torch.Tensor, name: str, result: torch.Tensor) -> torch.Tensor:
        lambda_d, lambda_b = self.vera_lambda_d[name], self.vera_lambda_b[name]
        A, B = self.projections(name, lambda_d)
        x_d = self.vera_dropout[name](self._cast_input_dtype(x, lambda_d.dtype))
        return vera_output(result, x_d, A, B, lambda_d, lambda_b)

    # -- merge -----------------------------------------------------------------------------------------
    def delta_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(Λ_b B, Λ_d A): their product is the delta, (out, in)."""
        lambda_d, lambda_b = self.vera_lambda_d[name], self.vera_lambda_b[name]
        A, B = self.projections(name, lambda_d)
        return B * lambda_b.unsqueeze(1), A * lambda_d.unsqueeze(1)

    def delta_weight(self, name: str) -> torch.Tensor:
        """(Λ_b B)(Λ_d A) in the base weight's layout (transposed for Conv1D)."""
        left, right = self.delta_factors(name)
        delta = left @ right
        return delta.T if self.fan_in_fan_out else delta

    get_delta_weight = delta_weight   # PEFT's name

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return True   # additive: W + ΔW

    def merged_weight(self, weight: torch.Tensor, name: str, sign: int) -> torch.Tensor:
        """weight ± delta, in place (addmm_ without the (out, in) delta when the dtypes agree)."""
        left, right = self.delta_factors(name)
        if left.dtype != weight.dtype:
            return weight.add_(self.delta_weight(name), alpha=sign)
        if self.fan_in_fan_out:
            return weight.addmm_(right.T, left.T, alpha=sign)
        return weight.addmm_(left, right, alpha=sign)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}"
