"""OFTRotation: one adapter's parameters on one layer, PEFT's `oft_R[adapter]` module.

Its single parameter `weight` (n_stored, b(b-1)/2) holds the packed skew-symmetric blocks (checkpoint key
`<module>.oft_R.weight`); n_stored is r, or 1 with block_share (that block serves all r blocks).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .cayley import coft_project_, rotation_blocks


class OFTRotation(nn.Module):
    def __init__(self, r: int, block_size: int, in_features: int, config, device=None, dtype=None,
                 coft: bool = False, block_share: bool = False):
        super().__init__()
        self.r = r                                      # blocks applied (r x block_size = in_features)
        self.block_size = block_size
        self.in_features = in_features
        self.n_elements = block_size * (block_size - 1) // 2
        self.block_share = bool(block_share)
        self.coft = bool(coft)
        self.eps = config.eps
        self.use_cayley_neumann = bool(config.use_cayley_neumann)
        self.num_cayley_neumann_terms = config.num_cayley_neumann_terms
        stored = 1 if self.block_share else r
        self.weight = nn.Parameter(torch.empty(stored, self.n_elements, device=device, dtype=dtype))

    def reset(self, init_weights: bool) -> None:
        """init_weights=True: zeros, the identity rotation; False: N(0, 0.1) (PEFT's two inits)."""
        with torch.no_grad():
            if init_weights:
                self.weight.zero_()
            else:
                self.weight.normal_(0.0, 0.1)

    def blocks(self, packed: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The rotation blocks (n_stored, b, b), from `packed` (default: the parameter). COFT first projects
        `packed` in place (the parameter: PEFT does so on every forward and merge)."""
        packed = self.weight if packed is None else packed
        if self.coft:
            coft_project_(packed, self.eps)
        return rotation_blocks(packed, self.block_size, self.use_cayley_neumann, self.num_cayley_neumann_terms)

    def merge_blocks(self) -> torch.Tensor:
        """blocks() for a merge: half-precision parameters on the CPU are expanded in float32 and the result
        rounded back (PEFT's get_delta_weight does so, CPU half matmuls being slow)."""
        weight = self.weight
        if weight.device.type == "cpu" and weight.dtype in (torch.float16, torch.bfloat16):
            return self.blocks(weight.detach().float()).to(weight.dtype)
        return self.blocks()

    def extra_repr(self) -> str:
        shared = ", block_share" if self.block_share else ""
        return f"r={self.r}, block_size={self.block_size}{shared}{', coft' if self.coft else ''}"
