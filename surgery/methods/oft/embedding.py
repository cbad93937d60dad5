"""OFT for nn.Embedding: each looked-up row is rotated (the rotated dimension is embedding_dim).

    ids ──► base_layer (E) ──► e BD_1 BD_2 ... ──► y        merge: E <- E BD (same order: outputs kept)

The adapter lives in `oft_embedding_R` (PEFT's container, checkpoint key `<module>.oft_embedding_R.weight`).
"""
from __future__ import annotations

import torch

from .blockwise import rotate_features
from .layer import OFTLayer


class Embedding(OFTLayer):
    adapter_layer_names = ("oft_embedding_R",)
    rotates_input = False

    dim_name = "embedding_dim"

    @staticmethod
    def dim_of(base) -> int:
        return base.embedding_dim

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.runs_base_only():
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        out_dtype = result.dtype
        for rotation in self._active_rotations():
            result = rotate_features(result.to(rotation.weight.dtype), rotation.blocks(), rotation.r)
        return result.to(out_dtype)
