"""BOFTLayer: the per-adapter butterfly rotation and output scale, shared by the Linear and Conv2d layers.

    W' = s ⊙ (W_flat M^T)           W_flat: the base weight as (out, F); s: (out,) per output row
    merge:   W <- s ⊙ (W M^T)        unmerge: W <- (W M) ⊙ (1 / s)   (M is orthogonal: M^T M = I)

Several active adapters compose as PEFT's do: the rotations multiply in activation order (M_a2 M_a1, so
W' = W M_a1^T M_a2^T) and the scales multiply. Subclasses give the scale's stored shape and the forward.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...graph.kinds import in_out_features
from ..base_layer import AdapterLayer
from .butterfly import rotate_rows, rotations
from .dropout import MultiplicativeDropout

_NO_DROPOUT = nn.Identity()  # stateless: one instance serves every adapter without dropout


class BOFTLayer(AdapterLayer):
    adapter_layer_names = ("boft_R", "boft_s")
    other_param_names = ("boft_block_size", "boft_block_num", "boft_dropout")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        modules = self._modules   # direct writes, as in AdapterLayer.__init__
        modules["boft_dropout"], modules["boft_R"], modules["boft_s"] = (
            nn.ModuleDict(), nn.ParameterDict(), nn.ParameterDict())
        self.boft_dropout: nn.ModuleDict
        self.boft_R: nn.ParameterDict
        self.boft_s: nn.ParameterDict
        in_f, out_f = in_out_features(self.get_base_layer())
        self.__dict__.update(boft_block_size={}, boft_block_num={}, in_features=in_f, out_features=out_f)
        self.boft_block_size: dict[str, int]
        self.boft_block_num: dict[str, int]

    def scale_shape(self) -> tuple[int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- adding an adapter -----------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config, boft_block_size: int, boft_block_num: int,
                     boft_n_butterfly_factor: int = 1) -> None:
        """Add adapter `adapter_name`: R (factors, blocks, size, size) and s, as the plan resolved them."""
        weight = self.get_base_layer().weight
        kwargs = dict(device=weight.device, dtype=weight.dtype)
        R = torch.zeros(boft_n_butterfly_factor, boft_block_num, boft_block_size, boft_block_size, **kwargs)
        s = torch.ones(self.scale_shape(), **kwargs)
        if config.init_weights is False and weight.device.type != "meta":
            R.normal_(0.0, 0.1)     # PEFT's order: R first, then s
            s.normal_(1.0, 0.1)
        self.boft_R[adapter_name] = nn.Parameter(R)
        self.boft_s[adapter_name] = nn.Parameter(s)
        p = config.boft_dropout
        self.boft_dropout[adapter_name] = MultiplicativeDropout(p) if p > 0 else _NO_DROPOUT
        self.boft_block_size[adapter_name] = boft_block_size
        self.boft_block_num[adapter_name] = boft_block_num
        self.mark_new_adapter(adapter_name, config)

    # -- the adapter's pieces --------------------------------------------------------------------------
    def blocks(self, name: str) -> torch.Tensor:
        """The orthogonal blocks Q (factors, blocks, size, size) of adapter `name`, dropout applied."""
        return self.boft_dropout[name](rotations(self.boft_R[name]))

    def active_in_layer(self) -> list[str]:
        return [n for n in self._active_adapters if n in self.boft_R]

    def total_scale(self, names: list[str]) -> torch.Tensor:
        """The product of the adapters' scales, one per output row: (out,)."""
        scale = self.boft_s[names[0]].reshape(-1)
        for name in names[1:]:
            scale = scale * self.boft_s[name].reshape(-1)
        return scale

    def rotated_weight(self, names: list[str]) -> torch.Tensor:
        """s ⊙ (W_flat M^T) for the adapters `names` in order, as (out, F), in the adapters' dtype."""
        weight = self.get_base_layer().weight
        blocks = [self.blocks(n) for n in names]
        flat = weight.reshape(weight.shape[0], -1).to(blocks[0].dtype)
        for Q in blocks:
            flat = rotate_rows(flat, Q, transpose=True)
        return flat * self.total_scale(names)[:, None]

    # -- merge -----------------------------------------------------------------------------------------
    def _to_merge(self, adapter_names: Optional[list[str]]) -> list[str]:
        names = self._active_adapters if adapter_names is None else adapter_names
        return [n for n in names if n in self.boft_R and n not in self.merged_adapters]

    def _fold(self, weight: torch.Tensor, name: str, sign: int) -> torch.Tensor:
        """`weight` with adapter `name` folded in (sign=+1: s ⊙ W M^T) or taken out (sign=-1: (W M) / s)."""
        R, s = self.boft_R[name], self.boft_s[name].reshape(-1, 1)
        Q = rotations(R)
        flat = weight.reshape(weight.shape[0], -1).to(Q.dtype)
        if sign > 0:
            flat = rotate_rows(flat, Q, transpose=True) * s
        else:
            flat = rotate_rows(flat, Q) * (1 / s)
        return flat.reshape(weight.shape).to(weight.dtype)

    @torch.no_grad()
    def _merged_weight(self, names: list[str], safe: bool) -> torch.Tensor:
        weight = self.get_base_layer().weight.data
        for name in names:
            weight = self._fold(weight, name, +1)
            if safe and not torch.isfinite(weight).all():
                raise self._non_finite(name)
        return weight

    def check_merge(self, adapter_names: Optional[list[str]] = None) -> None:
        """Raise MergeError if a safe merge of these adapters would produce NaN/inf; changes nothing."""
        self._merged_weight(self._to_merge(adapter_names), safe=True)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        names = self._to_merge(adapter_names)
        if not names:
            return
        merged = self._merged_weight(names, safe=safe_merge)   # all adapters checked before any write
        self.get_base_layer().weight.data.copy_(merged)
        self.merged_adapters.extend(names)

    @torch.no_grad()
    def unmerge(self) -> None:
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            base.weight.data.copy_(self._fold(base.weight.data, name, -1))
