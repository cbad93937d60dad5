"""LoRA for torch.nn.MultiheadAttention, as PEFT's lora.MultiheadAttention (checkpoints load both ways).

nn.MultiheadAttention has no Linear to wrap for q/k/v: its forward reads `in_proj_weight` (3E, E) directly, and it
reads `out_proj.weight` / `out_proj.bias` without calling out_proj. So the update goes into the weights the base
forward reads, for the length of the call (E: embed_dim, s = alpha / r):

    W_in'  = W_in  + s * B @ A          A: (r, E)  B: (3E, r)    this layer's lora_A / lora_B
    W_out' = W_out + 2 * s * Bo @ Ao    Ao: (r, E) Bo: (E, r)    out_proj's own lora_A / lora_B
    b_out' = b_out + s * bias(Bo)       lora_bias only; lora_B's bias on the in_proj side is never used
    y, attn_weights = MultiheadAttention(query, key, value, ...) with W_in', W_out', b_out'

The 2 is PEFT's: it folds the out_proj delta in by hand and then once more through the wrapped Linear's merge. It is
kept, so outputs, merged weights and gradients equal PEFT's for one checkpoint. Gradients are PEFT's too: the second
copy is added through `.data` there (no gradient), the base weights get none, and with several active adapters only
the last one is in the graph (PEFT detaches the running merged weight per adapter). lora_dropout is never applied:
there is no input to drop out. Only q, k, v of one size (a packed in_proj_weight) are supported, and no DoRA.

Layout, PEFT's (so state-dict and checkpoint keys are PEFT's, and get_layer_status lists both layers):

    mha: MultiheadAttention              this layer: lora_A / lora_B for W_in
      └── base_layer: the original nn.MultiheadAttention
            └── out_proj: OutProj        a LoRA Linear (lora_A / lora_B for W_out) around the original out_proj

OutProj is an adapter layer of its own for the model-wide passes (set_adapter, enable/disable, checkpoints, dtype);
its forward never runs, and a forward refuses to run with it merged and this layer not (PEFT's rule). This layer lists itself after the
modules inside it (named_modules), so passes that unwrap layers one by one (unload, delete_adapter) put out_proj
back before its path goes away.

Unlike PEFT, no parameter is re-registered around a forward: named_parameters() keeps the same objects and
requires_grad flags; during the call the adapted weights sit in their place (where FSDP's unsharded views sit, if
any) and the originals come back afterwards.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from ...graph.walk import is_adapter_layer
from .init import init_linear_like
from .layer import LoraLayer, uninitialised_linear
from .linear import Linear

# What PEFT's layer exposes of the base module (code reading nn.MultiheadAttention's attributes on the layer).
EXPOSED = ("embed_dim", "kdim", "vdim", "_qkv_same_embed_dim", "num_heads", "dropout", "batch_first", "head_dim",
           "in_proj_weight", "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "merge_masks")


def refuses(base: nn.MultiheadAttention, config, fqn: str) -> Optional[str]:
    """Why LoRA cannot wrap this MultiheadAttention (PEFT's words where PEFT refuses), or None."""
    if not base._qkv_same_embed_dim:   # kdim/vdim != embed_dim: separate q/k/v weights, no in_proj_weight
        return (f"{fqn!r}: Only same embed for query/key/value is supported as of now for MultiheadAttention "
                f"(kdim={base.kdim}, vdim={base.vdim}, embed_dim={base.embed_dim})")
    if config.use_dora:
        return f"{fqn!r}: MultiheadAttention does not support DoRA (yet), please set use_dora to False"
    out = base.out_proj
    if not isinstance(out, OutProj) and (is_adapter_layer(out) or not isinstance(out, nn.Linear)):   # OutProj: 2nd adapter
        return (f"{fqn!r}: out_proj must be an instance of nn.Linear for MultiheadAttention (it is a "
                f"{type(out).__name__}); do not target the out_proj of a MultiheadAttention you target")
    if config.lora_bias and out.bias is None:   # PEFT accepts it, then fails in every forward
        return (f"lora_bias=True on {fqn!r}, a MultiheadAttention without biases: out_proj's LoRA bias has no "
                f"base bias to go into; set lora_bias=False")
    return None


def added_params(base: nn.MultiheadAttention, params: dict, config) -> int:
    """A (r, E), B (3E, r) for in_proj; A (r, E), B (E, r) for out_proj; both lora_Bs' biases with lora_bias."""
    r, e = params["r"], base.embed_dim
    return r * 4 * e + r * 2 * e + (4 * e if config.lora_bias else 0)


class OutProj(Linear):
    """out_proj's LoRA half. MultiheadAttention reads its weight without calling it, so the owner folds it in."""
    add_delta_ = LoraLayer.add_delta_   # W + s * (B @ A), not Linear's fused addmm_: merged weights round as PEFT's

    def _get_name(self) -> str:
        return "Linear"   # printed (and in get_layer_status) as PEFT's: lora.Linear


def _swap(module: nn.Module, name: str, value):
    """Put `value` where `module.<name>` is read from and return what was there: the parameter, or an unsharded
    view FSDP has set as a plain attribute over it."""
    store = module.__dict__ if name in module.__dict__ else module._parameters
    old, store[name] = store[name], value
    return old


class MultiheadAttention(LoraLayer):

    def __init__(self, base_layer: nn.MultiheadAttention):
        # PEFT re-registers both weights after the biases; the same order keeps state_dict() key-for-key PEFT's.
        for params, key in ((base_layer._parameters, "in_proj_weight"), (base_layer.out_proj._parameters, "weight")):
            params[key] = params.pop(key)
        base_layer._modules["out_proj"] = OutProj(base_layer.out_proj)   # direct write, as in AdapterLayer
        super().__init__(base_layer)
        self.__dict__.update(in_features=base_layer.embed_dim, out_features=3 * base_layer.embed_dim)

    @property
    def out_proj_layer(self) -> OutProj:
        return self.get_base_layer()._modules["out_proj"]

    @property
    def out_proj(self) -> nn.Module:
        """The original out_proj (as PEFT's layer gives it)."""
        return self.out_proj_layer.get_base_layer()

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        entries = list(super().named_modules(memo, prefix, remove_duplicate))   # [(prefix, self), inner...]
        yield from entries[1:] + entries[:1]   # self last: out_proj's layer is unwrapped while its path exists

    # -- adapters --------------------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config, r: int, lora_alpha: float, scaling: Optional[float] = None,
                     use_dora: Optional[bool] = None) -> None:
        out = self.out_proj_layer
        if "_surgery_fqn" in self.__dict__:
            out.__dict__.setdefault("_surgery_fqn", f"{self.__dict__['_surgery_fqn']}.base_layer.out_proj")
        out.update_layer(adapter_name, config, r, lora_alpha, scaling, use_dora)   # both halves, always
        super().update_layer(adapter_name, config, r, lora_alpha, scaling, use_dora)

    def _new_factors(self, adapter_name: str, r: int, config) -> None:
        weight = self.get_base_layer().in_proj_weight
        device, dtype = weight.device, weight.dtype
        lora_A = self.lora_A._modules[adapter_name] = uninitialised_linear(self.in_features, r, False, device, dtype)
        lora_B = self.lora_B._modules[adapter_name] = uninitialised_linear(r, self.out_features, config.lora_bias,
                                                                           device, dtype)
        if device.type != "meta":
            init_linear_like(config.init_lora_weights, lora_A, lora_B, r)

    def in_out_features(self) -> tuple[int, int]:
        return self.in_features, self.out_features

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, query: torch.Tensor, *args, **kwargs):
        if getattr(self, "_batch_adapters", None) is not None:
            raise TypeError("lora.MultiheadAttention does not support mixed adapter batches.")
        dtype = query.dtype
        names = [] if self.runs_base_only() else [n for n in self._active_adapters if n in self.r]
        if names and self.out_proj_layer.merged_adapters:
            raise ValueError("The out_proj layer of MultiheadAttention has merged layers but MultiheadAttention "
                             "itself doesn't; please ensure that either both or none have merged layers")
        with self._adapted_weights(names):
            out, attn_weights = self.base_layer(query, *args, **kwargs)
        return out.to(dtype), (attn_weights.to(dtype) if attn_weights is not None else None)   # as PEFT

    @contextlib.contextmanager
    def _adapted_weights(self, names: list[str]):
        """The base forward reads W_in', W_out', b_out' while inside; what was there comes back after."""
        if not names:
            yield
            return
        slots = ((self.get_base_layer(), "in_proj_weight"), (self.out_proj, "weight"), (self.out_proj, "bias"))
        saved = [_swap(module, name, value) for (module, name), value in zip(slots, self._adapted(names))]
        try:
            yield
        finally:
            for (module, name), value in zip(slots, saved):
                _swap(module, name, value)

    def _adapted(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(W_in', W_out', b_out') with `names` folded in, in PEFT's order of operations and roundings."""
        out = self.out_proj_layer
        w_in, w_out, b_out = self.in_proj_weight.detach(), self.out_proj.weight.detach(), self.out_proj.bias
        for i, name in enumerate(names):
            d_in, d_out = self.delta_weight(name), out.delta_weight(name)
            if i < len(names) - 1:   # PEFT's next fold starts from .data.detach(): only the last adapter trains
                d_in, d_out = d_in.detach(), d_out.detach()
            w_in = w_in + d_in.to(w_in.dtype)
            w_out = w_out + d_out.to(w_out.dtype)                   # PEFT's fold by hand
            if name in out.merged_adapters:
                continue   # out_proj's own fold is in already (a model-wide merge reaches it first)
            w_out = (w_out + d_out.detach()).to(w_out.dtype)        # ...and out_proj's merge (through .data)
            lora_bias = out.lora_B[name].bias
            if lora_bias is not None and b_out is not None:
                b_out = (b_out + (lora_bias * out.scaling[name]).detach()).to(b_out.dtype)
        return w_in, w_out, b_out

    # -- merge -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def check_merge(self, adapter_names: Optional[list[str]] = None) -> None:
        names = self._to_merge(adapter_names)
        if names and not all(t is None or torch.isfinite(t).all() for t in self._adapted(names)):
            raise self._non_finite(", ".join(names))

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        names = self._to_merge(adapter_names)
        if safe_merge and names:
            self.check_merge(names)
        out = self.out_proj_layer
        w_in, w_out = self.in_proj_weight.data, self.out_proj.weight.data
        for name in names:   # PEFT's order: in_proj and out_proj by hand, then out_proj's own merge
            w_in.add_(self.delta_weight(name).to(w_in.dtype))
            w_out.add_(out.delta_weight(name).to(w_out.dtype))
            out.merge(adapter_names=[name])   # nothing to do when a model-wide merge did it already
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        w_in, w_out = self.in_proj_weight.data, self.out_proj.weight.data
        while self.merged_adapters:   # newest first, both by hand; then out_proj's own unmerge
            name = self.merged_adapters.pop()
            w_in.sub_(self.delta_weight(name).to(w_in.dtype))
            w_out.sub_(self.out_proj_layer.delta_weight(name).to(w_out.dtype))
        self.out_proj_layer.unmerge()

    def _restore_weights(self) -> None:
        """PEFT's hook to re-register the weights it swaps out around a forward; nothing is swapped out here."""


def _from_base(name: str) -> property:
    return property(lambda self: getattr(self.get_base_layer(), name), doc=f"The base module's `{name}`.")


for _name in EXPOSED:
    setattr(MultiheadAttention, _name, _from_base(_name))
