"""OFTLayer: what every OFT-wrapped layer shares: the adapters' rotations, merge and unmerge.

Each adapter a holds r rotation blocks R_a,j (b x b); BD_a = blockdiag(R_a,1..r) acts on the layer's rotated
dimension (in_features, a conv patch, an embedding row). Linear and Conv2d rotate their input, Embedding
its output (subclasses' forward), so a merge folds BD into the weight from the matching side:

    input side  (rotates_input):      W <- W BD^T      (W viewed (out, dim))
    output side (Embedding):          E <- E BD
    unmerge:                          the same with BD^-1 (each block inverted: no dense inverse)

Several active adapters rotate in turn (x BD_1 BD_2 ...); merging them folds them in the order given, as
PEFT 0.21.2 does (W BD_1^T BD_2^T, which for input-side layers is not the product the forward applies
unless the blocks commute); unmerging undoes them in reverse. A safe merge computes in a copy and refuses
NaN/inf before writing.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...errors import PlanError
from ..base_layer import AdapterLayer
from .blockwise import rotate
from .rotation import OFTRotation


class OFTLayer(AdapterLayer):
    adapter_layer_names = ("oft_R",)
    other_param_names = ("r", "oft_block_size")
    rotates_input = True

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self._modules[self.adapter_layer_names[0]] = nn.ModuleDict()   # direct write, as in AdapterLayer
        self.__dict__.update(r={}, oft_block_size={})
        self.r: dict[str, int]
        self.oft_block_size: dict[str, int]

    @property
    def rotations(self) -> nn.ModuleDict:
        return self._modules[self.adapter_layer_names[0]]

    dim_name = "in_features"     # how messages name the rotated dimension

    @staticmethod
    def dim_of(base: nn.Module) -> int:  # pragma: no cover - abstract
        """The size of the dimension the adapter rotates, for base module `base`."""
        raise NotImplementedError

    def rotated_dim(self) -> int:
        return self.dim_of(self.get_base_layer())

    # -- adding an adapter -----------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config, r: int, oft_block_size: int, coft: Optional[bool] = None,
                     block_share: Optional[bool] = None) -> None:
        """Add (or replace) adapter `adapter_name`: r blocks of oft_block_size, COFT and block sharing as the plan
        says (default: the config's); the Cayley options come from the config."""
        dim = self.rotated_dim()
        if r * oft_block_size != dim:
            raise PlanError(f"OFT adapter {adapter_name!r}: r={r} x oft_block_size={oft_block_size} != the rotated "
                            f"dimension {dim} of {self._layer_name()}")
        weight = self.get_base_layer().weight
        rotation = OFTRotation(r, oft_block_size, dim, config, device=weight.device, dtype=weight.dtype,
                               coft=config.coft if coft is None else coft,
                               block_share=config.block_share if block_share is None else block_share)
        if weight.device.type != "meta":
            rotation.reset(config.init_weights)
        self.rotations[adapter_name] = rotation
        self.r[adapter_name] = r
        self.oft_block_size[adapter_name] = oft_block_size
        self.mark_new_adapter(adapter_name, config)

    def _active_rotations(self):
        return [self.rotations[name] for name in self._active_adapters if name in self.rotations]

    # -- merge -----------------------------------------------------------------------------------------
    def _folded(self, weight: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """`weight` with blockdiag(blocks) folded in from this layer's side, as a new tensor in the blocks'
        dtype (the caller rounds it into the weight once)."""
        rows = weight.shape[0]
        n_blocks, size = self.rotated_dim() // blocks.shape[-1], blocks.shape[-1]
        w = weight.reshape(rows, n_blocks, size).to(blocks.dtype)
        side = blocks.transpose(1, 2) if self.rotates_input else blocks
        return rotate(w, side).view(weight.shape)

    @staticmethod
    def _inverse(blocks: torch.Tensor) -> torch.Tensor:
        """Each block inverted in float32 (or wider), as PEFT inverts its block-diagonal matrix."""
        wide = blocks if blocks.dtype in (torch.float32, torch.float64) else blocks.float()
        return torch.linalg.inv(wide).to(blocks.dtype)

    def _to_merge(self, adapter_names: Optional[list[str]]) -> list[str]:
        return [n for n in (adapter_names or self._active_adapters)
                if n in self.rotations and n not in self.merged_adapters]

    @torch.no_grad()
    def check_merge(self, adapter_names: Optional[list[str]] = None) -> None:
        """Raise MergeError if a safe merge of these adapters would produce NaN/inf; writes no weight."""
        weight = self.get_base_layer().weight.data
        for name in self._to_merge(adapter_names):
            weight = self._folded(weight, self.rotations[name].merge_blocks()).to(weight.dtype)
            if not torch.isfinite(weight).all():
                raise self._non_finite(name)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        weight = self.get_base_layer().weight.data
        for name in self._to_merge(adapter_names):
            merged = self._folded(weight, self.rotations[name].merge_blocks())
            if safe_merge and not torch.isfinite(merged.to(weight.dtype)).all():
                raise self._non_finite(name)
            weight.copy_(merged)   # rounds once into the weight's dtype, in its own storage (as PEFT)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        weight = self.get_base_layer().weight.data
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            weight.copy_(self._folded(weight, self._inverse(self.rotations[name].merge_blocks())))
