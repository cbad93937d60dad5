"""LoraLayer: the low-rank update shared by every wrapped layer type.

    y = W x + b  +  sum over active adapters a:  s_a * B_a(A_a(dropout_a(x)))
    s_a = alpha / r  (or alpha / sqrt(r) with rsLoRA)

Merging folds s * (B @ A) into W in place; unmerging subtracts it again. A safe merge builds the
merged weight in a copy and refuses it (naming the layer) if any value is NaN/inf.
Subclasses give the factor shapes (`_new_factors`), the delta in W's layout (`delta_weight`), and the
adapter's contribution to the output (`_adapter_output`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import MergeError
from ...graph.kinds import in_out_features, is_conv1d
from ..base_layer import AdapterLayer, lazy_container
from .dora import DoraMagnitude
from .dropout import dropped_lora_A
from .init import draw_torch_default_init, init_from_base, init_linear_like
from .mixed import mixed_adapter_output
from .replication import replica_merge_refusal
from .tied_factors import merges_through_leader, tie_factors


_NO_DROPOUT = nn.Identity()  # stateless: one instance serves every adapter without dropout


def uninitialised_linear(in_f: int, out_f: int, bias: bool, device, dtype) -> nn.Linear:
    """An nn.Linear with empty parameters: the initialiser fills them once (nn.Linear's own init would run
    kaiming first, wasted work that dominates injection time on a meta-device 70B model)."""
    layer = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(layer)
    layer.__dict__.update(in_features=in_f, out_features=out_f)  # past nn.Module.__setattr__: see AdapterLayer
    params = layer._parameters
    params["weight"] = nn.Parameter(torch.empty(out_f, in_f, device=device, dtype=dtype))
    params["bias"] = nn.Parameter(torch.empty(out_f, device=device, dtype=dtype)) if bias else None
    return layer


class LoraLayer(AdapterLayer):
    adapter_layer_names = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
    # use_dora is per adapter too: delete_adapter drops its entry with the others (as PEFT's)
    other_param_names = ("r", "lora_alpha", "scaling", "lora_dropout", "use_dora", "initial_scaling")
    dora_drops_input = True            # DoRA's dropout recomputes the base output on dropped x (not Embedding)
    merge_rounds_delta_first = False   # PEFT's Embedding always rounds the delta to the weight dtype first
    lora_embedding_A = lazy_container("lora_embedding_A", nn.ParameterDict)
    lora_embedding_B = lazy_container("lora_embedding_B", nn.ParameterDict)
    lora_magnitude_vector = lazy_container("lora_magnitude_vector", nn.ModuleDict)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        base = self.get_base_layer()
        fan_in_fan_out = is_conv1d(base)   # Conv1D stores (in, out): PEFT's fan_in_fan_out
        # PEFT's in_features / out_features: Linear and Conv1D sizes, conv channels, (vocabulary, width)
        in_f, out_f = in_out_features(base) or (None, None)
        modules = self._modules   # direct writes, as in AdapterLayer.__init__
        modules["lora_A"], modules["lora_B"], modules["lora_dropout"] = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        self.lora_A: nn.ModuleDict
        self.lora_B: nn.ModuleDict
        self.lora_dropout: nn.ModuleDict
        self.__dict__.update(fan_in_fan_out=fan_in_fan_out, r={}, lora_alpha={}, scaling={}, use_dora={},
                             initial_scaling={}, in_features=in_f, out_features=out_f)
        self.in_features: Optional[int]
        self.out_features: Optional[int]
        self.r: dict[str, int]
        self.lora_alpha: dict[str, float]
        self.scaling: dict[str, float]
        self.use_dora: dict[str, bool]

    # -- adding an adapter -----------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config, r: int, lora_alpha: float, scaling: Optional[float] = None,
                     use_dora: Optional[bool] = None, tied_to: Optional[nn.Module] = None) -> None:
        """Add (or replace) adapter `adapter_name` with rank r on this layer, as the plan says (scaling and
        use_dora default to what the config gives: alpha / r or alpha / sqrt(r), config.use_dora). tied_to: the
        embedding layer whose factors this one shares (ensure_weight_tying, tied_factors.py)."""
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        if scaling is None:
            scaling = lora_alpha / math.sqrt(r) if config.use_rslora else lora_alpha / r
        self.scaling[adapter_name] = self.initial_scaling[adapter_name] = scaling
        dropout = nn.Dropout(p=config.lora_dropout) if config.lora_dropout > 0 else _NO_DROPOUT
        self.lora_dropout._modules[adapter_name] = dropout  # the name was validated by the planner
        self._new_factors(adapter_name, r, config)
        if tied_to is not None:
            tie_factors(self, tied_to, adapter_name, config)
        self.use_dora[adapter_name] = bool(config.use_dora if use_dora is None else use_dora)
        if self.use_dora[adapter_name]:
            self.lora_magnitude_vector[adapter_name] = DoraMagnitude.for_layer(self, adapter_name)
        self.mark_new_adapter(adapter_name, config)

    def _new_factors(self, adapter_name: str, r: int, config) -> None:
        """Create lora_A/lora_B for nn.Linear-shaped layers; conv and embedding layers override."""
        device, dtype = self.get_base_layer().weight.device, self.base_float_dtype()
        in_f, out_f = self.in_out_features()
        lora_A = self.lora_A._modules[adapter_name] = uninitialised_linear(in_f, r, False, device, dtype)
        lora_B = self.lora_B._modules[adapter_name] = uninitialised_linear(r, out_f, config.lora_bias, device, dtype)
        if device.type != "meta":
            # torch's default init of both factors, drawn as PEFT draws it (kept for the no-op init, False)
            draw_torch_default_init((lora_A, lora_B), keep=config.init_lora_weights is False)
            if not init_from_base(self, adapter_name, config):   # pissa, olora, ...: from the base weight (init.py)
                init_linear_like(config.init_lora_weights, lora_A, lora_B, r, defaults_drawn=True)

    def in_out_features(self) -> tuple[int, int]:
        sizes = in_out_features(self.get_base_layer())   # not the weight's shape: a 4-bit weight is packed
        if sizes is not None:
            return sizes
        out_f, in_f = self.get_base_layer().weight.shape[:2]
        return (out_f, in_f) if self.fan_in_fan_out else (in_f, out_f)

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self._disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        batch_adapters = getattr(self, "_batch_adapters", None)
        if batch_adapters is not None and self.merged:
            self.unmerge()  # per-sample adapters cannot run on merged weights
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        result_dtype = result.dtype   # float32 adapters on a half-precision base compute in float32, as PEFT
        if batch_adapters is not None:
            return mixed_adapter_output(self, x, result, batch_adapters).to(result_dtype)
        for name in self._active_adapters:
            if name in self.r:
                result = self._adapter_output(x, name, result)
        return result.to(result_dtype)

    def _adapter_output(self, x: torch.Tensor, name: str, result: torch.Tensor) -> torch.Tensor:
        lora_A = self.lora_A[name]
        x = self._cast_input_dtype(x, lora_A.weight.dtype)
        if self.use_dora[name]:
            return self.lora_magnitude_vector[name].apply(self, x, name, result)
        # lora_A(dropout(x)) keeping x and the mask (bits or RNG state, dropout.py), not x_d and the noise
        return result + self.lora_B[name](dropped_lora_A(self.lora_dropout[name], lora_A, x)) * self.scaling[name]

    # -- what DoRA (dora.py) needs of a layer type: Linear / Conv1D here, conv and embedding override ---------
    def dora_view(self, weight: torch.Tensor) -> torch.Tensor:
        """The base weight as a 2-D (out, in) view whose rows DoRA normalises (transposed for fan_in_fan_out)."""
        return weight.T if self.fan_in_fan_out else weight

    def dora_factors(self, name: str) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(A, B) with delta = s * B @ A in dora_view's layout; None where the delta is no such product."""
        return self.lora_A[name].weight, self.lora_B[name].weight

    def dora_delta(self, name: str) -> torch.Tensor:  # pragma: no cover - only where dora_factors gives None
        raise NotImplementedError

    def dora_factor_shape(self) -> tuple[int, ...]:
        """How the per-row factor m / n broadcasts over the base weight."""
        return (1, -1) if self.fan_in_fan_out else (-1, 1)

    def dora_magnitude_shape(self) -> tuple[int, ...]:
        """The magnitude parameter's shape (PEFT's: (out,) here, (1, out, 1...) for convs)."""
        return (self.in_out_features()[1],)

    def adapter_dtype(self, name: str) -> torch.dtype:
        return self.lora_A[name].weight.dtype

    def lora_path(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """B(A(x)), unscaled."""
        return self.lora_B[name](self.lora_A[name](x))

    def output_bias(self, result: torch.Tensor) -> Optional[torch.Tensor]:
        """The base's bias, shaped to broadcast over its output `result` (None without one)."""
        return getattr(self.get_base_layer(), "bias", None)

    def base_without_bias(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer's output on x without its bias (DoRA with dropout: the base output of dropped x)."""
        return F.linear(x, self.dora_view(self.dense_base_weight()).to(x.dtype))

    # -- merge -----------------------------------------------------------------------------------------
    def merge_refusal(self) -> Optional[MergeError]:
        """Why this layer cannot be merged at all (None: it can); conv overrides for grouped convolutions."""
        return replica_merge_refusal(self)   # a base weight shared by replicated layers (layer_replication)

    def delta_weight(self, name: str) -> torch.Tensor:
        """s * B @ A in the base weight's layout (transposed when fan_in_fan_out)."""
        delta = (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]
        return delta.T if self.fan_in_fan_out else delta

    # -- scaling at run time (PEFT's API) -------------------------------------------------------------
    def set_scale(self, adapter: str, scale: float) -> None:
        """Scaling of `adapter` = scale x its initial alpha / r (or alpha / sqrt(r)); unknown adapters are ignored."""
        if adapter in self.initial_scaling:
            self.scaling[adapter] = scale * self.initial_scaling[adapter]

    def scale_layer(self, scale: float) -> None:
        """Multiply the active adapters' scaling by `scale`."""
        for name in self._active_adapters:
            if name in self.scaling:
                self.scaling[name] *= scale

    def unscale_layer(self, scale: Optional[float] = None) -> None:
        """Divide the active adapters' scaling by `scale`, or (None) reset it to the initial alpha / r."""
        for name in self._active_adapters:
            if name in self.scaling:
                self.scaling[name] = self.initial_scaling[name] if scale is None else self.scaling[name] / scale

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """PEFT's name for delta_weight (user code and PEFT's tests call it); each layer kind's own delta."""
        return self.delta_weight(adapter)

    def _merged_weight(self, weight: torch.Tensor, name: str, sign: int, safe: bool = False) -> torch.Tensor:
        """W with adapter `name` folded in (sign=+1) or taken out (sign=-1); may work in place.

        float32 factors on a half-precision weight: a plain merge adds the float32 delta and rounds once; a safe
        merge and an unmerge round the delta to the weight's dtype first. That is PEFT's arithmetic, so merged
        weights are bit-identical to PEFT's."""
        if self.use_dora[name]:
            return self.lora_magnitude_vector[name].merged_weight(self, weight, name, sign)
        return self.add_delta_(weight, name, sign, round_first=safe or sign < 0 or self.merge_rounds_delta_first)

    @torch.no_grad()
    def unmerged_copy(self, weight: torch.Tensor) -> torch.Tensor:
        """`weight` with every merged adapter taken out, as a new tensor: DoRA computes its norm from the
        unmerged weight even when other adapters are merged already (as PEFT does)."""
        w = weight.clone()
        for name in reversed(self.merged_adapters):
            if self.use_dora[name]:
                w = self.lora_magnitude_vector[name].unmerged(self, w, name)
            else:
                w = self.add_delta_(w, name, -1, round_first=True)
        return w

    def add_delta_(self, weight: torch.Tensor, name: str, sign: int, round_first: bool = False) -> torch.Tensor:
        """weight += sign * s B A, in place (round_first: round the delta to the weight's dtype before adding)."""
        delta = self.delta_weight(name)
        return weight.add_(delta.to(weight.dtype) if round_first else delta, alpha=sign)

    def _to_merge(self, adapter_names: Optional[list[str]]) -> list[str]:
        return [n for n in (adapter_names or self._active_adapters) if n in self.r and n not in self.merged_adapters]

    @torch.no_grad()
    def check_merge(self, adapter_names: Optional[list[str]] = None) -> None:
        """Raise MergeError if a safe merge of these adapters would produce NaN/inf; changes nothing (works on
        copies), so a model-wide safe merge can refuse before its first layer is written."""
        names = self._to_merge(adapter_names)
        refusal = self.merge_refusal() if names else None
        if refusal is not None:
            raise refusal
        base = self.get_base_layer()
        weight = self.dense_base_weight().clone()
        bias = base.bias.data.clone() if getattr(base, "bias", None) is not None else None
        for name in names:
            weight = self._merged_weight(weight, name, +1, safe=True)
            lora_B = self.lora_B[name] if name in self.lora_B else None
            if bias is not None and getattr(lora_B, "bias", None) is not None:
                bias = bias + lora_B.bias * self.scaling[name]
            if not torch.isfinite(weight).all() or (bias is not None and not torch.isfinite(bias).all()):
                raise self._non_finite(name)
        for name in names:   # DoRA kept the norm of the copy: drop it
            if self.use_dora[name]:
                self.lora_magnitude_vector[name]._merge_norm = None

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        names = self._to_merge(adapter_names)
        refusal = self.merge_refusal() if names else None
        if refusal is not None:
            raise refusal
        base = self.get_base_layer()
        for name in names:
            if merges_through_leader(self, name):   # a tied adapter: its leader's merge holds it (tied_factors.py)
                self.merged_adapters.append(name)
                continue
            with torch.no_grad():
                weight = self.dense_base_weight()
                if safe_merge:
                    merged = self._merged_weight(weight.clone(), name, +1, safe=True)
                    if not torch.isfinite(merged).all():
                        raise self._non_finite(name)
                    if merged.dtype == weight.dtype and merged.shape == weight.shape:
                        merged = weight.copy_(merged)   # a plain base keeps its storage (shared views see it)
                else:
                    merged = self._merged_weight(weight, name, +1)
                self.store_base_weight(merged)
                self._merge_bias(base, name, +1)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if merges_through_leader(self, name):
                continue
            with torch.no_grad():
                self.store_base_weight(self._merged_weight(self.dense_base_weight(), name, -1))
                self._merge_bias(base, name, -1)

    def _merge_bias(self, base: nn.Module, name: str, sign: int) -> None:
        lora_B = self.lora_B[name] if name in self.lora_B else None
        if lora_B is not None and getattr(lora_B, "bias", None) is not None and base.bias is not None:
            base.bias.data.add_(lora_B.bias * self.scaling[name], alpha=sign)
