"""DoRA: weight-decomposed LoRA (Liu et al. 2024), for Linear and transformers' Conv1D.

    W' = m * (W + s B A) / ||W + s B A||_row        m: trainable magnitude, one per output row
    y  = W' x  =  (m/n - 1) * (W x)  +  (m/n) * s * B(A(x))  (+ bias),   n = ||W + s B A||_row (detached)

The row norm is computed without forming W + sBA (an out x in matrix):
    n^2 = ||W_i||^2 + 2s <B_i, (W A^T)_i> + s^2 <B_i, (B A A^T)_i>
with ||W_i||^2 cached while W is unchanged; the cost is one (out x in x r) matmul, no big temporary.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _out_in(layer, weight: torch.Tensor) -> torch.Tensor:
    """The base weight as (out, in): transposed for fan_in_fan_out layers."""
    return weight.T if layer.fan_in_fan_out else weight


class DoraMagnitude(nn.Module):
    """Holds the magnitude vector as `.weight` (PEFT's key: lora_magnitude_vector.<adapter>.weight)."""

    def __init__(self, magnitude: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(magnitude, requires_grad=True)
        self._row_sq_key = None
        self._row_sq = None
        self._merge_norm = None

    @classmethod
    def for_layer(cls, layer, name: str) -> "DoraMagnitude":
        weight = layer.get_base_layer().weight
        if weight.device.type == "meta":
            return cls(torch.empty(_out_in(layer, weight).shape[0], device="meta", dtype=weight.dtype))
        module = cls(torch.empty(0))
        module.weight = nn.Parameter(module.row_norm(layer, name, weight.data).to(weight.dtype))
        return module

    def _row_sq_norms(self, weight: torch.Tensor) -> torch.Tensor:
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, tuple(weight.shape))
        if key != self._row_sq_key:
            compute = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
            # vector_norm reduces without an (out x in) temporary (pow(2).sum(1) makes one: 46 MB on 5632x2048)
            self._row_sq = torch.linalg.vector_norm(weight, dim=1, dtype=compute).square_()
            self._row_sq_key = key
        return self._row_sq

    @torch.no_grad()
    def row_norm(self, layer, name: str, weight: torch.Tensor) -> torch.Tensor:
        """||W + s B A|| per output row, detached, from `weight` in the base layout."""
        w = _out_in(layer, weight)
        A = layer.lora_A[name].weight
        B = layer.lora_B[name].weight
        s = layer.scaling[name]
        compute = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
        A, B = A.to(compute), B.to(compute)
        cross = (B * (w.to(compute) @ A.T)).sum(1)
        quad = ((B @ (A @ A.T)) * B).sum(1)
        sq = self._row_sq_norms(w) + 2 * s * cross + (s * s) * quad
        return sq.clamp_min(0).sqrt()

    def apply(self, layer, x: torch.Tensor, name: str, result: torch.Tensor) -> torch.Tensor:
        lora_A, lora_B = layer.lora_A[name], layer.lora_B[name]
        dropout, s = layer.lora_dropout[name], layer.scaling[name]
        base = layer.get_base_layer()
        weight = base.weight
        if isinstance(dropout, nn.Identity) or not layer.training:
            base_result = result if base.bias is None else result - base.bias
        else:
            x = dropout(x)
            base_result = F.linear(x, _out_in(layer, weight).to(x.dtype))
        norm = self.row_norm(layer, name, weight)
        scale = (self.weight / norm).to(x.dtype)
        return result + (scale - 1) * base_result + scale * (lora_B(lora_A(x)) * s)

    @torch.no_grad()
    def merged_weight(self, layer, weight: torch.Tensor, name: str, sign: int) -> torch.Tensor:
        """Fold DoRA into `weight` (sign=+1) or take it out again (sign=-1) using the norm from merge time."""
        A = layer.lora_A[name].weight
        if sign > 0:   # the norm of the unmerged weight (other merged adapters taken out), kept for the unmerge
            unmerged = layer.unmerged_copy(weight) if layer.merged_adapters else weight
            self._merge_norm = self.row_norm(layer, name, unmerged).to(torch.promote_types(weight.dtype, A.dtype))
        factor = self.weight / self._merge_norm
        factor = factor.view(1, -1) if layer.fan_in_fan_out else factor.view(-1, 1)
        if weight.dtype == A.dtype == factor.dtype:
            # One dtype: in place, no (out x in) temporary (addmm_ for the delta, then the row scale).
            if sign > 0:
                return layer.add_delta_(weight, name, +1).mul_(factor)
            self._merge_norm = None
            return layer.add_delta_(weight.div_(factor), name, -1)
        # float32 factors on a half-precision weight: computed at float32 and rounded once (PEFT's arithmetic).
        delta = layer.delta_weight(name)
        if sign > 0:
            return (factor * (weight + delta)).to(weight.dtype)
        self._merge_norm = None
        return (weight / factor - delta).to(weight.dtype)

    @torch.no_grad()
    def unmerged(self, layer, weight: torch.Tensor, name: str) -> torch.Tensor:
        """`weight` with this merged DoRA adapter taken out, as a new tensor; the merge state is kept."""
        factor = self.weight / self._merge_norm
        factor = factor.view(1, -1) if layer.fan_in_fan_out else factor.view(-1, 1)
        return (weight / factor - layer.delta_weight(name)).to(weight.dtype)
