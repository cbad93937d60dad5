"""FourierFTLinear: the FourierFT update on nn.Linear and transformers' Conv1D (whose (in, out) weight takes the
update transposed when merged; the update itself is always (out, in), PEFT's layout).

    x ──► base_layer ───────────────────────────► (+) ──► y
     └──► x ΔW^T,  ΔW = s · Re(ifft2(S(c)))  ──────┘        c: fourierft_spectrum (n trainable values)

Large layers apply ΔW through FFTs of x (never built); small ones build ΔW (kept while the spectrum is
unchanged and no gradient is wanted, e.g. in eval). See spectrum.py.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...graph.kinds import in_out_features, is_conv1d
from ..base_layer import AdapterLayer
from .spectrum import apply_delta, dense_delta, prefers_fft, spectral_index, spectral_locations


class FourierFTLinear(AdapterLayer):
    adapter_layer_names = ("fourierft_spectrum",)
    other_param_names = ("fourierft_n_frequency", "fourierft_scaling", "fourierft_random_loc_seed", "indices",
                         "_index_cache", "_delta_cache")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self._modules["fourierft_spectrum"] = nn.ParameterDict()   # direct write, as in AdapterLayer.__init__
        self.fourierft_spectrum: nn.ParameterDict
        base = self.get_base_layer()
        in_f, out_f = in_out_features(base)
        self.__dict__.update(in_features=in_f, out_features=out_f, fan_in_fan_out=is_conv1d(base),
                             fourierft_n_frequency={}, fourierft_scaling={}, fourierft_random_loc_seed={},
                             indices={}, _index_cache={}, _delta_cache={})
        self.in_features: int
        self.out_features: int
        self.indices: dict[str, torch.Tensor]   # PEFT's name: (2, n) rows / columns of the coefficients

    # -- adding an adapter -----------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config, n_frequency: int, scaling: Optional[float] = None) -> None:
        """Add (or replace) adapter `adapter_name` with n_frequency coefficients at PEFT's seeded locations."""
        scaling = config.scaling if scaling is None else scaling
        self.fourierft_n_frequency[adapter_name] = n_frequency
        self.fourierft_scaling[adapter_name] = scaling
        self.fourierft_random_loc_seed[adapter_name] = config.random_loc_seed
        self.indices[adapter_name] = spectral_locations(self.out_features, self.in_features, n_frequency,
                                                        config.random_loc_seed)
        self._index_cache.pop(adapter_name, None)
        self._delta_cache.pop(adapter_name, None)
        weight = self.get_base_layer().weight
        if weight.device.type == "meta":
            values = torch.empty(n_frequency, device="meta", dtype=weight.dtype)
        elif config.init_weights:
            values = torch.zeros(n_frequency, device=weight.device, dtype=weight.dtype)
        else:   # drawn in float32 on the CPU, then moved: PEFT's numbers for the same global seed
            values = torch.randn(n_frequency).to(weight.device, dtype=weight.dtype)
        self.fourierft_spectrum[adapter_name] = nn.Parameter(values)
        self.mark_new_adapter(adapter_name, config)

    # -- the update ------------------------------------------------------------------------------------
    def _index(self, name: str, device):
        cache = self._index_cache.setdefault(name, {})
        index = cache.get(device)
        if index is None:
            index = cache[device] = spectral_index(self.indices[name], self.out_features, self.in_features, device)
        return index

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """ΔW (out, in) in the spectrum's dtype (PEFT's name and layout, also for Conv1D)."""
        spectrum = self.fourierft_spectrum[adapter]
        delta = dense_delta(spectrum, self._index(adapter, spectrum.device), self.out_features, self.in_features,
                            self.fourierft_scaling[adapter])
        return delta.to(spectrum.dtype)

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return not is_conv1d(self.get_base_layer())   # the delta is (out, in) even there: PEFT refuses Conv1D

    def _delta_for_forward(self, name: str, spectrum: torch.Tensor) -> torch.Tensor:
        """ΔW, kept while no gradient is wanted and the spectrum is unchanged (its version counter moves on
        every in-place write: optimizer steps, load_state_dict)."""
        if torch.is_grad_enabled() and spectrum.requires_grad:
            self._delta_cache.pop(name, None)
            return self.get_delta_weight(name)
        key = (spectrum._version, spectrum.data_ptr(), spectrum.device, spectrum.dtype,
               self.fourierft_scaling[name])
        cached = self._delta_cache.get(name)
        if cached is None or cached[0] != key:
            cached = self._delta_cache[name] = (key, self.get_delta_weight(name).detach())
        return cached[1]

    def _adapter_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x ΔW^T, as (tokens, out)."""
        spectrum = self.fourierft_spectrum[name]
        n = spectrum.shape[0]
        if prefers_fft(self.out_features, self.in_features, n):
            out = apply_delta(x, spectrum, self._index(name, spectrum.device), self.out_features, self.in_features,
                              self.fourierft_scaling[name])
            return out.to(spectrum.dtype)
        delta = self._delta_for_forward(name, spectrum)
        return F.linear(x.to(delta.dtype), delta).reshape(-1, self.out_features)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.runs_base_only():
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        params = self.fourierft_spectrum._parameters
        names = [n for n in self._active_adapters if n in params]
        if not names:
            return result
        flat = result.reshape(-1, self.out_features)
        for name in names:
            flat = flat + self._adapter_output(x, name)
        return flat.view(result.shape).to(x.dtype)   # PEFT returns x's dtype

    # -- merge -----------------------------------------------------------------------------------------
    def _delta_in_weight_layout(self, name: str) -> torch.Tensor:
        delta = self.get_delta_weight(name).detach()
        return delta.T if self.fan_in_fan_out else delta

    def _to_merge(self, adapter_names: Optional[list[str]]) -> list[str]:
        return [n for n in (adapter_names or self._active_adapters)
                if n in self.fourierft_spectrum._parameters and n not in self.merged_adapters]

    @torch.no_grad()
    def check_merge(self, adapter_names: Optional[list[str]] = None) -> None:
        """Raise MergeError if a safe merge of these adapters would give NaN/inf; changes nothing."""
        weight = self.get_base_layer().weight.data
        for name in self._to_merge(adapter_names):
            weight = weight + self._delta_in_weight_layout(name)
            if not torch.isfinite(weight).all():
                raise self._non_finite(name)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        weight = self.get_base_layer().weight
        for name in self._to_merge(adapter_names):
            delta = self._delta_in_weight_layout(name)
            if safe_merge:
                merged = weight.data.clone()
                merged += delta
                if not torch.isfinite(merged).all():
                    raise self._non_finite(name)
                weight.data.copy_(merged)
            else:
                weight.data.add_(delta)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        weight = self.get_base_layer().weight
        while self.merged_adapters:
            weight.data.sub_(self._delta_in_weight_layout(self.merged_adapters.pop()))
