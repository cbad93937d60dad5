"""The merge protocol of a layer whose adapters only change the base weight (VeRA adds to it, HRA multiplies
it): merge, safe merge, unmerge and the model-wide pre-check, from one hook.

    merged_weight(weight, name, sign) -> W with adapter `name` folded in (sign +1) or taken out (sign -1)

It may work in place and return `weight`, or return a new tensor. A safe merge builds the merged weight from a
copy and refuses it (MergeError naming the layer) if any value is NaN/inf, leaving the layer untouched.
Shared by VeRA and HRA (the HRA layers import it from here).
"""
from __future__ import annotations

from typing import Optional

import torch



class WeightMerge:
    def merged_weight(self, weight: torch.Tensor, name: str, sign: int) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _to_merge(self, adapter_names: Optional[list[str]]) -> list[str]:
        present = self.adapter_names()
        return [n for n in (adapter_names or self._active_adapters) if n in present and n not in self.merged_adapters]

    @torch.no_grad()
    def check_merge(self, adapter_names: Optional[list[str]] = None) -> None:
        """Raise MergeError if a safe merge of these adapters would produce NaN/inf; changes nothing."""
        weight = self.dense_base_weight().clone()
        for name in self._to_merge(adapter_names):
            weight = self.merged_weight(weight, name, +1)
            if not torch.isfinite(weight).all():
                raise self._non_finite(name)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        for name in self._to_merge(adapter_names):
            weight = self.dense_base_weight()   # a quantized base: its dequantized copy (stored requantized)
            if safe_merge:
                merged = self.merged_weight(weight.clone(), name, +1)
                if not torch.isfinite(merged).all():
                    raise self._non_finite(name)
                if merged.dtype == weight.dtype and merged.shape == weight.shape:
                    merged = weight.copy_(merged)   # a plain base keeps its storage (shared views see it)
            else:
                merged = self.merged_weight(weight, name, +1)
            self.store_base_weight(merged)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            self.store_base_weight(self.merged_weight(self.dense_base_weight(), name, -1))
