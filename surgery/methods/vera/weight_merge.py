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
        weight = self.get_base_layer().weight.data.clone()
        for name in self._to_merge(adapter_names):
            weight = self.merged_weight(weight, name, +1)
            if not torch.isfinite(weight).all():
                raise self._non_finite(name)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        base = self.get_base_layer()
        for name in self._to_merge(adapter_names):
            if safe_merge:
                merged = self.merged_weight(base.weight.data.clone(), name, +1)
                if not torch.isfinite(merged).all():
                    raise self._non_finite(name)
                base.weight.data.copy_(merged)
            else:
                base.weight.data = self.merged_weight(base.weight.data, name, +1)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            base.weight.data = self.merged_weight(base.weight.data, name, -1)
