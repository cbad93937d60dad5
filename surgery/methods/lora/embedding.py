"""LoRA for nn.Embedding: the low-rank update is a lookup into A, then a projection by B.

    y = E[ids] + s * (A^T[ids] @ B^T)      A: (r, num_embeddings)   B: (embedding_dim, r)
Parameters are `lora_embedding_A` / `lora_embedding_B` (ParameterDicts), PEFT's names.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import init_embedding
from .layer import LoraLayer


class Embedding(LoraLayer):
    merge_rounds_delta_first = True

    def _new_factors(self, adapter_name: str, r: int, config) -> None:
        base = self.get_base_layer()
        weight = base.weight
        kwargs = dict(device=weight.device, dtype=weight.dtype)
        self.lora_embedding_A[adapter_name] = nn.Parameter(torch.empty(r, base.num_embeddings, **kwargs))
        self.lora_embedding_B[adapter_name] = nn.Parameter(torch.empty(base.embedding_dim, r, **kwargs))
        if weight.device.type != "meta":
            # torch.empty is garbage: even the no-op init (False) must start from defined values.
            nn.init.normal_(self.lora_embedding_A[adapter_name])
            nn.init.normal_(self.lora_embedding_B[adapter_name])
            init_embedding(config.init_lora_weights, self.lora_embedding_A[adapter_name],
                           self.lora_embedding_B[adapter_name])

    def _embed(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        base = self.get_base_layer()
        return F.embedding(ids, weight, padding_idx=base.padding_idx, max_norm=base.max_norm,
                           norm_type=base.norm_type, scale_grad_by_freq=base.scale_grad_by_freq, sparse=base.sparse)

    def _adapter_output(self, x: torch.Tensor, name: str, result: torch.Tensor) -> torch.Tensor:
        after_A = self._embed(x, self.lora_embedding_A[name].T)
        return result + (after_A @ self.lora_embedding_B[name].T) * self.scaling[name]

    def delta_weight(self, name: str) -> torch.Tensor:
        return (self.lora_embedding_B[name] @ self.lora_embedding_A[name]).T * self.scaling[name]

    def _merge_bias(self, base, name, sign) -> None:
        pass
