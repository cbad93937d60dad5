"""TrainableTokensLayer: new values for a few rows (tokens) of an embedding, or of a tied output head.

    trainable_tokens_delta[a]     (n_tokens, dim)  the rows' new values (they replace, they are not added)
    trainable_tokens_original[a]  (n_tokens, dim)  the rows as they were, to unmerge (buffers, not saved)
    token_indices[a]              the rows

The layer's math reads only `token_indices` and `init_weights` (update_layer's keywords), never a config class,
so another method can put these rows on its own embedding layers.

Ties: a *follower* (update_layer(..., tied_to=leader)) wraps a module sharing its weight with the leader's (an
lm_head tied to embed_tokens) and holds the leader's very containers: one set of parameters, seen under both
paths (both keys are saved, as PEFT saves them), the tied output sees the new rows too. A follower keeps its
own list of the adapters it follows, so deleting one from the model removes it from every follower as well.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...errors import AdapterNameError, MergeError, PlanError
from ..base_layer import AdapterLayer
from ...graph.kinds import embed_scale
from .rows import embed, linear, needs_replaced_weight


class OriginalRows(nn.Module):
    """Per-adapter buffers, not saved (PEFT's non-persistent BufferDict): they move with the model."""

    def __setitem__(self, name: str, tensor: torch.Tensor) -> None:
        self.register_buffer(name, tensor, persistent=False)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._buffers[name]

    def __delitem__(self, name: str) -> None:
        del self._buffers[name]
        self._non_persistent_buffers_set.discard(name)

    def __contains__(self, name: str) -> bool:
        return name in self._buffers

    def keys(self):
        return self._buffers.keys()

    def __iter__(self):
        return iter(self._buffers)

    def __len__(self) -> int:
        return len(self._buffers)


class TrainableTokensLayer(AdapterLayer):
    repr_with_method = False   # PEFT prints it bare ("TrainableTokensLayer(")
    adapter_layer_names = ("trainable_tokens_delta", "trainable_tokens_original")
    other_param_names = ("token_indices",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self._modules["trainable_tokens_delta"] = nn.ParameterDict()
        self._modules["trainable_tokens_original"] = OriginalRows()
        # follows: None for a layer owning its rows, else the adapters it follows; swaps: indices per device
        self.__dict__.update(token_indices={}, follows=None, _swaps={})
        self.trainable_tokens_delta: nn.ParameterDict
        self.trainable_tokens_original: OriginalRows
        self.token_indices: dict[str, list[int]]

    # -- adding an adapter -----------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config, token_indices: Optional[list[int]] = None,
                     init_weights: bool = True, tokens: Optional[int] = None, tied_to: Optional[nn.Module] = None):
        """New rows `token_indices` for adapter `adapter_name`: copies of the current rows (init_weights) or
        N(0, 1) values; with `tied_to`, follow that layer's rows instead (tokens: the plan's count, unused)."""
        self._swaps.clear()
        if tied_to is not None:
            self._follow(adapter_name, tied_to)
        else:
            if self.follows is not None:
                raise PlanError(f"{self._layer_name()} follows the rows of the layer its weight is tied to; it cannot "
                                f"hold rows of its own")
            weight = self.get_base_layer().weight
            with torch.no_grad():
                original = weight[list(token_indices)].detach().clone()
                values = original.clone() if init_weights else torch.randn(
                    original.shape, dtype=weight.dtype, device=weight.device)
            self.token_indices[adapter_name] = list(token_indices)
            self.trainable_tokens_delta[adapter_name] = nn.Parameter(values)
            self.trainable_tokens_original[adapter_name] = original
        self.mark_new_adapter(adapter_name, config)

    def _follow(self, adapter_name: str, leader: nn.Module) -> None:
        if self.follows is None:
            if self.adapter_names():
                raise PlanError(f"{self._layer_name()} holds rows of its own; it cannot also follow a tied layer")
            self._modules["trainable_tokens_delta"] = leader.trainable_tokens_delta
            self._modules["trainable_tokens_original"] = leader.trainable_tokens_original
            self.__dict__.update(token_indices=leader.token_indices, follows=[])
        self.follows.append(adapter_name)

    def adapter_names(self) -> list[str]:
        return super().adapter_names() if self.follows is None else list(self.follows)

    def delete_adapter(self, adapter_name: str) -> None:
        self._swaps.clear()
        if self.follows is None:
            return super().delete_adapter(adapter_name)
        if adapter_name not in self.follows:   # the rows belong to the leader: only stop following them
            raise AdapterNameError(f"adapter {adapter_name!r} is not on this layer; it has {self.follows}")
        if adapter_name in self.merged_adapters:
            self.unmerge()
        self.follows.remove(adapter_name)
        self._active_adapters = [n for n in self._active_adapters if n != adapter_name]

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.runs_base_only():
            return self.base_layer(x, *args, **kwargs)
        return self.forward_with(x, [n for n in self._active_adapters if n in self.token_indices], *args, **kwargs)

    def forward_with(self, x: torch.Tensor, names: list[str], *args, **kwargs) -> torch.Tensor:
        """The output with these adapters' rows (none: the base layer's), whatever is active."""
        if not names:
            return self.base_layer(x, *args, **kwargs)
        if len(names) > 1:
            self._refuse_overlap(names)
        base = self.get_base_layer()
        if isinstance(base, nn.Embedding):
            full = needs_replaced_weight(base) or (
                base.padding_idx is not None and any(base.padding_idx in self.token_indices[n] for n in names))
            out = embed(base, x, self._swap_list(names, x.device), full)
            scale = embed_scale(base)
            return out if scale is None else out * scale.to(out.dtype)
        return linear(base, x, self._swap_list(names, x.device))

    def _swap_list(self, names: list[str], device: torch.device) -> list[tuple]:
        return [(*self._swap(name, device), self.trainable_tokens_delta[name]) for name in names]

    def _swap(self, name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, slot) of adapter `name` on `device`, built once (a host-to-device copy per step otherwise)."""
        key = (name, device)
        if key in self._swaps:
            return self._swaps[key]
        indices = torch.tensor(self.token_indices[name], dtype=torch.long, device=device)
        slot = torch.full((self.get_base_layer().weight.shape[0],), -1, dtype=torch.long, device=device)
        slot[indices] = torch.arange(len(indices), device=device)
        if not torch.is_inference_mode_enabled():   # inference tensors cannot serve a later backward: not kept
            self._swaps[key] = (indices, slot)
        return indices, slot

    def _refuse_overlap(self, names: list[str]) -> None:
        """Two adapters writing the same row would leave it undefined (PEFT refuses too)."""
        seen: dict[int, str] = {}
        for name in dict.fromkeys(self.merged_adapters + names):
            for index in self.token_indices[name]:
                if index in seen and seen[index] != name:   # PEFT's words first (code matches them)
                    raise MergeError(f"Token indices of adapter {name} are already defined and would result in "
                                     f"undefined merging behavior. Only disjunct token indices are currently "
                                     f"supported. (adapters {seen[index]!r} and {name!r} both train token {index} "
                                     f"of {self._layer_name()}; only adapters with disjoint token_indices combine)")
                seen[index] = name

    # -- merge -----------------------------------------------------------------------------------------
    def _to_merge(self, adapter_names: Optional[list[str]]) -> list[str]:
        return [n for n in (adapter_names or self._active_adapters)
                if n in self.token_indices and n not in self.merged_adapters]

    def _write(self, weight: torch.Tensor, name: str, source: torch.Tensor) -> torch.Tensor:
        indices = self._swap(name, weight.device)[0]
        return weight.index_copy_(0, indices, source.to(weight.dtype))

    @torch.no_grad()
    def check_merge(self, adapter_names: Optional[list[str]] = None) -> None:
        """Raise MergeError if merging these adapters would leave NaN/inf in the weight; changes nothing."""
        names = self._to_merge(adapter_names)
        if names:
            self._refuse_overlap(names)
            self._merged_copy(names)

    def _merged_copy(self, names: list[str]) -> torch.Tensor:
        merged = self.get_base_layer().weight.data.clone()
        for name in names:
            self._write(merged, name, self.trainable_tokens_delta[name])
            if not torch.isfinite(merged).all():
                raise self._non_finite(name)
        return merged

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Write the adapters' rows into the base weight (in place: a tied weight stays one tensor)."""
        names = self._to_merge(adapter_names)
        if not names:
            return
        self._refuse_overlap(names)
        weight = self.get_base_layer().weight.data
        if safe_merge:
            weight.copy_(self._merged_copy(names))
        else:
            for name in names:
                self._write(weight, name, self.trainable_tokens_delta[name])
        self.merged_adapters.extend(names)

    @torch.no_grad()
    def unmerge(self) -> None:
        weight = self.get_base_layer().weight.data
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.token_indices:   # else deleted by the leader, which put the tied rows back already
                self._write(weight, name, self.trainable_tokens_original[name])
