"""LoRA for nn.Embedding: the low-rank update is a lookup into A, then a projection by B.

    y = E[ids] + s * (A^T[ids] @ B^T) * c      A: (r, num_embeddings)   B: (embedding_dim, r)
c is the base's own `embed_scale` where it has one (Gemma's scaled embeddings: its forward multiplies the lookup,
so the update is scaled alike, as in PEFT), else 1. Parameters are `lora_embedding_A` / `lora_embedding_B`
(ParameterDicts), PEFT's names.

DoRA normalises E^T + s B A per embedding dimension (m: (embedding_dim,)) and ignores lora_dropout, as PEFT:
    y = (m/n) * E[ids] + (m/n) * s * (A^T[ids] @ B^T) * c
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...graph.kinds import embed_scale
from .init import init_embedding
from .layer import LoraLayer


class Embedding(LoraLayer):
    merge_rounds_delta_first = True
    dora_drops_input = False

    def _new_factors(self, adapter_name: str, r: int, config) -> None:
        base = self.get_base_layer()
        weight = base.weight
        kwargs = dict(device=weight.device, dtype=weight.dtype)
        self.lora_embedding_A[adapter_name] = nn.Parameter(torch.empty(r, base.num_embeddings, **kwargs))
        self.lora_embedding_B[adapter_name] = nn.Parameter(torch.empty(base.embedding_dim, r, **kwargs))
        # torch.empty is garbage: every init, the no-op one (False) too, writes both factors
        init_embedding(config.init_lora_weights, self.lora_embedding_A[adapter_name],
                       self.lora_embedding_B[adapter_name])

    def _embed(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        base = self.get_base_layer()
        return F.embedding(ids, weight, padding_idx=base.padding_idx, max_norm=base.max_norm,
                           norm_type=base.norm_type, scale_grad_by_freq=base.scale_grad_by_freq, sparse=base.sparse)

    def lora_path(self, x: torch.Tensor, name: str) -> torch.Tensor:
        out = self._embed(x, self.lora_embedding_A[name].T) @ self.lora_embedding_B[name].T
        scale = embed_scale(self.get_base_layer())
        return out if scale is None else out * scale.to(out.dtype)

    def _adapter_output(self, x: torch.Tensor, name: str, result: torch.Tensor) -> torch.Tensor:
        if self.use_dora[name]:
            return self.lora_magnitude_vector[name].apply(self, x, name, result)
        return result + self.lora_path(x, name) * self.scaling[name]

    def delta_weight(self, name: str) -> torch.Tensor:
        return (self.lora_embedding_B[name] @ self.lora_embedding_A[name]).T * self.scaling[name]

    def _merge_bias(self, base, name, sign) -> None:
        pass

    # -- DoRA: rows are embedding dimensions (E^T), delta = s * B @ A in that layout ----------------------
    def dora_view(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.T

    def dora_factors(self, name: str):
        return self.lora_embedding_A[name], self.lora_embedding_B[name]

    def dora_factor_shape(self) -> tuple[int, ...]:
        return (1, -1)

    def adapter_dtype(self, name: str) -> torch.dtype:
        return self.lora_embedding_A[name].dtype

    def output_bias(self, result: torch.Tensor) -> Optional[torch.Tensor]:
        return None
