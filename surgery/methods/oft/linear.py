"""OFT for nn.Linear: the input is rotated block by block, then the frozen layer runs.

    x ──► x BD_1 ──► x BD_1 BD_2 ... ──► base_layer (W, b) ──► y        BD_a = blockdiag(R_a,1..r)
"""
from __future__ import annotations

import torch

from .blockwise import rotate_features
from .layer import OFTLayer


class Linear(OFTLayer):
    dim_name = "in_features"

    @staticmethod
    def dim_of(base) -> int:
        return base.in_features

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.runs_base_only():
            return self.base_layer(x, *args, **kwargs)
        previous_dtype = x.dtype
        for rotation in self._active_rotations():
            x = rotate_features(self._cast_input_dtype(x, rotation.weight.dtype), rotation.blocks(), rotation.r)
        return self.base_layer(x.to(previous_dtype), *args, **kwargs).to(previous_dtype)
