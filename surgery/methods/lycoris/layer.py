"""LycorisLayer: what LoHa and LoKr layers share (PEFT's LycorisLayer).

    y = base(x) + sum over active adapters a, unless module-dropped:  x * ΔW_a^T   (F.linear / F.conv with ΔW_a)
    ΔW_a = scaling_a * <method's factor product>,  scaling_a = alpha_a / r_a
    training: each adapter is skipped with probability module_dropout (one torch.rand(1) per adapter and
    forward, drawn even at rate 0, as PEFT does: the random stream stays PEFT's); rank dropout multiplies
    the rows of ΔW by a 0/1 mask (torch.rand(out) > rate), divided by its mean where the method rescales.

Merging adds ΔW to the base weight in place (`weight += ΔW`, PEFT's arithmetic: on a half-precision base the
float32 delta is added and rounded once); unmerging subtracts it. A safe merge works on a copy and refuses
NaN/inf, leaving the layer untouched. Subclasses create the factors (`_create_factors`), give ΔW in the base
weight's shape (`delta_weight`, PEFT's op order) and may compute the adapter's output without forming ΔW
(`_delta_output`).
"""
from __future__ import annotations

from typing import Optional

import torch

from ...graph.kinds import in_out_features
from ..base_layer import AdapterLayer


class LycorisLayer(AdapterLayer):
    other_param_names = ("r", "alpha", "scaling", "rank_dropout", "rank_dropout_scale", "module_dropout")
    rank_mask_float32 = False   # the rank-dropout mask's dtype: float32 (LoKr) or the delta's (LoHa)

    def __init__(self, base_layer):
        super().__init__(base_layer)
        in_f, out_f = in_out_features(self.get_base_layer())
        self.__dict__.update(r={}, alpha={}, scaling={}, rank_dropout={}, rank_dropout_scale={}, module_dropout={},
                             in_features=in_f, out_features=out_f)
        self.r: dict[str, int]
        self.alpha: dict[str, float]
        self.scaling: dict[str, float]
        self.rank_dropout: dict[str, float]
        self.rank_dropout_scale: dict[str, bool]
        self.module_dropout: dict[str, float]

    # -- adding an adapter -----------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config, r: int, alpha: float, scaling: Optional[float] = None,
                     **layout) -> None:
        """Add (or replace) adapter `adapter_name` as the plan says (scaling defaults to alpha / r; `layout`:
        the method's per-module shape decisions, as its spec's rewrite_params recorded them)."""
        self.r[adapter_name] = r
        self.alpha[adapter_name] = alpha
        self.scaling[adapter_name] = alpha / r if scaling is None else scaling
        self.rank_dropout[adapter_name] = config.rank_dropout
        # LoKr's option; LoHa has none and always divides its rank-dropout mask by the mean
        self.rank_dropout_scale[adapter_name] = bool(getattr(config, "rank_dropout_scale", True))
        self.module_dropout[adapter_name] = config.module_dropout
        self._create_factors(adapter_name, r, config, **layout)
        self.mark_new_adapter(adapter_name, config)

    def _create_factors(self, adapter_name: str, r: int, config, **layout) -> None:  # pragma: no cover
        raise NotImplementedError

    def factor_kwargs(self) -> dict:
        """Where new factors are made: float32 on the CPU (meta for a meta base), initialised there and then
        moved to the base's device and dtype, as PEFT does, so a seeded run starts from PEFT's values."""
        meta = self.get_base_layer().weight.device.type == "meta"
        return {"device": torch.device("meta" if meta else "cpu"), "dtype": torch.float32}

    def finish_factors(self, adapter_name: str) -> None:
        """Move the new adapter's factors to the base weight's device and (floating) dtype (PEFT's
        _move_adapter_to_device_of_base_layer; the façade upcasts half-precision ones back to float32)."""
        weight = self.get_base_layer().weight
        dtype = weight.dtype if weight.dtype.is_floating_point else None
        for _, holder in self.adapter_containers():
            param = holder._parameters.get(adapter_name)
            if param is not None and (param.device != weight.device or (dtype is not None and param.dtype != dtype)):
                holder[adapter_name] = torch.nn.Parameter(param.data.to(weight.device, dtype=dtype))

    # -- forward ---------------------------------------------------------------------------------------
    def delta_weight(self, name: str) -> torch.Tensor:  # pragma: no cover - abstract
        """ΔW of adapter `name` in the base weight's shape, without rank dropout (PEFT's get_delta_weight)."""
        raise NotImplementedError

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """PEFT's name for delta_weight."""
        return self.delta_weight(adapter_name)

    def rank_mask(self, name: str, rows: int, dtype: torch.dtype, device) -> Optional[torch.Tensor]:
        """The training-time rank-dropout mask over ΔW's rows, or None when there is none. Drawn on the CPU
        generator as PEFT draws it, so a seeded run drops the same rows."""
        rate = self.rank_dropout[name]
        if not (self.training and rate):
            return None
        mask = (torch.rand(rows) > rate).to(torch.float32 if self.rank_mask_float32 else dtype)
        if self.rank_dropout_scale[name]:
            mask /= mask.mean()
        return mask.to(device)

    def masked_delta(self, name: str) -> torch.Tensor:
        """ΔW with the rank-dropout mask applied to its rows (in training)."""
        weight = self.delta_weight(name)
        mask = self.rank_mask(name, weight.shape[0], weight.dtype, weight.device)
        if mask is not None:
            weight *= mask.view(-1, *[1] * (weight.dim() - 1))
        return weight

    def _delta_output(self, x: torch.Tensor, name: str) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        previous_dtype = x.dtype
        if self.runs_base_only():
            return self.base_layer(x, *args, **kwargs).to(previous_dtype)
        result = self.base_layer(x, *args, **kwargs)
        training = self.training
        for name in self._active_adapters:
            if name not in self.r:
                continue
            if training and not bool(torch.rand(1) > self.module_dropout[name]):
                continue   # module dropout: this adapter sits out this forward
            result = result + self._delta_output(x, name)
        return result.to(previous_dtype)

    # -- merge -----------------------------------------------------------------------------------------
    def _to_merge(self, adapter_names: Optional[list[str]]) -> list[str]:
        return [n for n in (adapter_names or self._active_adapters) if n in self.r and n not in self.merged_adapters]

    def add_delta_(self, weight: torch.Tensor, name: str, sign: int) -> torch.Tensor:
        """weight += sign * ΔW in place (PEFT's `weight += delta`); subclasses may avoid the temporaries."""
        delta = self.delta_weight(name)
        return weight.add_(delta) if sign > 0 else weight.sub_(delta)

    @torch.no_grad()
    def check_merge(self, adapter_names: Optional[list[str]] = None) -> None:
        """Raise MergeError if merging these adapters would give NaN/inf; works on a copy, changes nothing."""
        weight = self.get_base_layer().weight.data.clone()
        for name in self._to_merge(adapter_names):
            if not torch.isfinite(self.add_delta_(weight, name, +1)).all():
                raise self._non_finite(name)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        base = self.get_base_layer()
        for name in self._to_merge(adapter_names):
            with torch.no_grad():
                if safe_merge:
                    merged = self.add_delta_(base.weight.data.clone(), name, +1)
                    if not torch.isfinite(merged).all():
                        raise self._non_finite(name)
                    base.weight.data = merged
                else:
                    self.add_delta_(base.weight.data, name, +1)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        weight = self.get_base_layer().weight.data
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            with torch.no_grad():
                self.add_delta_(weight, name, -1)

    # -- PEFT's scale API (used by integrations that rescale adapters at run time) --------------------------
    def set_scale(self, adapter: str, scale: float) -> None:
        if adapter in self.r:
            self.scaling[adapter] = scale * self.alpha[adapter] / self.r[adapter]

    def scale_layer(self, scale: float) -> None:
        if scale != 1:
            for name in self._active_adapters:
                if name in self.r:
                    self.scaling[name] *= scale

    def unscale_layer(self, scale: Optional[float] = None) -> None:
        for name in self._active_adapters:
            if name in self.r:
                self.scaling[name] = self.alpha[name] / self.r[name] if scale is None else self.scaling[name] / scale
