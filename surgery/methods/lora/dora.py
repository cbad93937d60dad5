"""DoRA: weight-decomposed LoRA (Liu et al. 2024), for Linear, transformers' Conv1D, Conv1d/2d/3d and Embedding.

    W' = m * (W + s B A) / ||W + s B A||_row        m: trainable magnitude, one per output row
    y  = W' x  =  (m/n - 1) * (W x)  +  (m/n) * s * B(A(x))  (+ bias),   n = ||W + s B A||_row (detached)

"Rows" are the layer's dora_view of W: Linear (out, in); Conv1D W^T; a conv W.flatten(1), one row per output
channel (m: PEFT's (1, out, 1...)); an embedding W^T, one row per embedding dimension (m: (embedding_dim,)).
The row norm is computed without forming W + sBA (an out x in matrix):
    n^2 = ||W_i||^2 + 2s <B_i, (W A^T)_i> + s^2 <B_i, (B A A^T)_i>
the cost is one (out x in x r) matmul, no big temporary. A grouped
conv's delta is no such product (layer.dora_factors gives None): there W + s * delta is formed.
"""
from __future__ import annotations

import torch
from torch import nn



# PEFT's switch (helpers.DoraCaching): in eval mode, keep each layer's row norm n between forwards while the
# base weight, A, B and the scaling are unchanged (checked by tensor versions, so a stale norm is never used)
ENABLE_DORA_CACHING = False


def _version_key(t) -> tuple:
    # data_ptr + version, not id(): factors may be fresh views (a conv's flattened A, B) of the same storage
    return (t.data_ptr(), t._version, tuple(t.shape)) if isinstance(t, torch.Tensor) else (t,)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


class DoraMagnitude(nn.Module):
    """Holds the magnitude vector as `.weight` (PEFT's key: lora_magnitude_vector.<adapter>.weight)."""

    def __init__(self, magnitude: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(magnitude, requires_grad=True)
        self._merge_norm = None
        self._dora_cache: dict = {}   # PEFT's attribute name: {"norm": (key, n)} while caching is on

    def train(self, mode: bool = True):
        self._dora_cache.clear()   # as PEFT: switching modes drops the cache
        return super().train(mode)

    def forward_norm(self, layer, name: str) -> torch.Tensor:
        """n for a forward pass: cached in eval mode when DoRA caching is enabled, computed otherwise."""
        if not ENABLE_DORA_CACHING or self.training:
            self._dora_cache.clear()
            return self.row_norm(layer, name, layer.dense_base_weight())
        factors = layer.dora_factors(name)
        if factors is None:   # a grouped conv's delta: no factors to key the cache on
            return self.row_norm(layer, name, layer.dense_base_weight())
        key = tuple(_version_key(t) for t in (layer.get_base_layer().weight, *factors, layer.scaling[name]))
        hit = self._dora_cache.get("norm")
        if hit is None or hit[0] != key:
            hit = self._dora_cache["norm"] = (key, self.row_norm(layer, name, layer.dense_base_weight()))
        return hit[1]

    @classmethod
    def for_layer(cls, layer, name: str) -> "DoraMagnitude":
        shape = layer.dora_magnitude_shape()
        if layer.get_base_layer().weight.device.type == "meta":
            return cls(torch.empty(shape, device="meta", dtype=layer.base_float_dtype()))
        weight = layer.dense_base_weight()
        module = cls(torch.empty(0))
        module.weight = nn.Parameter(module.row_norm(layer, name, weight).to(weight.dtype).reshape(shape))
        return module

    @staticmethod
    def _row_sq_norms(weight: torch.Tensor) -> torch.Tensor:
        # Not cached between calls: a key by address and version goes stale when the base weight is written in
        # place through .data (merges do; `.data`'s version never moves) or a freed copy's address is reused, and
        # then DoRA would scale by the wrong norm. The pass costs 1/r of the cross term below.
        # vector_norm reduces without an (out x in) temporary (pow(2).sum(1) makes one: 46 MB on 5632x2048)
        return torch.linalg.vector_norm(weight, dim=1, dtype=_compute_dtype(weight)).square_()

    @torch.no_grad()
    def row_norm(self, layer, name: str, weight: torch.Tensor) -> torch.Tensor:
        """||W + s B A|| per row of the layer's dora_view, detached, from `weight` in the base layout: (rows,)."""
        w = layer.dora_view(weight)
        s = layer.scaling[name]
        compute = _compute_dtype(w)
        factors = layer.dora_factors(name)
        if factors is None:
            return torch.linalg.vector_norm(w.to(compute) + s * layer.dora_delta(name).to(compute), dim=1)
        A, B = (t.to(compute) for t in factors)
        cross = (B * (w.to(compute) @ A.T)).sum(1)
        quad = ((B @ (A @ A.T)) * B).sum(1)
        sq = self._row_sq_norms(w) + 2 * s * cross + (s * s) * quad
        return sq.clamp_min(0).sqrt()

    def apply(self, layer, x: torch.Tensor, name: str, result: torch.Tensor) -> torch.Tensor:
        """The layer's DoRA output from its base output `result` = W x + b:

            (m/n) * (W x + s B(A(x))) + b          (= result + (m/n - 1) W x + (m/n) s B(A(x)), PEFT's form)

        in three passes over the output instead of five. A half-precision adapter keeps PEFT's form (each op
        rounds there, so the order decides the values). With dropout in training, B A reads the dropped x_d and
        the base term is recomputed on it, as PEFT does: result + (m/n - 1) W x_d + (m/n) s B(A(x_d))."""
        dropout, s = layer.lora_dropout[name], layer.scaling[name]
        bias = layer.output_bias(result)
        dropping = layer.dora_drops_input and layer.training and not isinstance(dropout, nn.Identity)
        if dropping:
            x = dropout(x)
        lora = layer.lora_path(x, name)
        norm = self.forward_norm(layer, name)
        scale = (self.weight / norm.view(self.weight.shape)).to(lora.dtype)
        if dropping:
            return result + (scale - 1) * layer.base_without_bias(x) + scale * (lora * s)
        if lora.dtype in (torch.float16, torch.bfloat16):   # every op rounds: PEFT's order, for its values
            base_result = result if bias is None else result - bias
            return result + (scale - 1) * base_result + scale * (lora * s)
        base = result if bias is None else result - bias
        # W x + s B A x; a tensor s (hot-swap: read by a compiled graph) multiplies, add's alpha needs a number
        adapted = base + lora * s if isinstance(s, torch.Tensor) else torch.add(base, lora, alpha=s)
        return adapted * scale if bias is None else torch.addcmul(bias, adapted, scale)

    def _factor(self, layer) -> torch.Tensor:
        """m / n at merge time, shaped to broadcast over the base weight."""
        return (self.weight.reshape(-1) / self._merge_norm).view(layer.dora_factor_shape())

    @torch.no_grad()
    def merged_weight(self, layer, weight: torch.Tensor, name: str, sign: int) -> torch.Tensor:
        """Fold DoRA into `weight` (sign=+1) or take it out again (sign=-1) using the norm from merge time."""
        dtype = layer.adapter_dtype(name)
        if sign > 0:   # the norm of the unmerged weight (other merged adapters taken out), kept for the unmerge
            unmerged = layer.unmerged_copy(weight) if layer.merged_adapters else weight
            self._merge_norm = self.row_norm(layer, name, unmerged).to(torch.promote_types(weight.dtype, dtype))
        factor = self._factor(layer)
        if weight.dtype == dtype == factor.dtype:
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
        return (weight / self._factor(layer) - layer.delta_weight(name)).to(weight.dtype)
