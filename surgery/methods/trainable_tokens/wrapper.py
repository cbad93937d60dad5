"""TrainableTokensWrapper: a few rows of an embedding trained beside another method's adapter (PEFT's class of
that name, for LoRA's `trainable_token_indices`).

    parent.embed_tokens = TrainableTokensWrapper
                            └── token_adapter: the rows layer (TrainableTokensLayer's math, one per wrapper)
                                  ├── base_layer                      the original embedding (or tied head)
                                  └── trainable_tokens_delta[a], ...  the rows, as in the trainable-tokens method

The keys are PEFT's: `<path>.token_adapter.trainable_tokens_delta` is saved; `original_module` is the base layer,
reachable but not a second registered copy (not in any state dict). The wrapper is the adapter layer the pipeline
sees (it names, merges, deletes and unwraps it); the rows layer inside is not one, so nothing runs twice. A
wrapper tied to another (`tied_to`: a head sharing the embedding's weight) follows that wrapper's rows and saves
nothing: the tie saves them once, as PEFT.
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

import torch
from torch import nn

from ...naming import names_for_rows
from .layer import TrainableTokensLayer
from .rows import replaced_weight


class WrappedTokensLayer(TrainableTokensLayer):
    """The rows layer inside a TrainableTokensWrapper: not an adapter layer of its own (the wrapper is)."""

    _surgery_adapter_layer = False

    def _get_name(self) -> str:   # printed as PEFT prints it
        return "TrainableTokensLayer"

    def __repr__(self) -> str:
        return nn.Module.__repr__(self)

    @property
    def active_adapter(self) -> list[str]:
        """PEFT's: the wrapped layer is always activated with a list, so it reports one."""
        return list(self._active_adapters)


class TrainableTokensWrapper(nn.Module):
    _surgery_adapter_layer = True
    # PEFT's attributes: where the wrapper's per-adapter state lives, below it
    adapter_layer_names = ("token_adapter.trainable_tokens_delta",)
    other_param_names = ("token_adapter.token_indices", "token_adapter.trainable_tokens_original")
    base_infix = "token_adapter.base_layer"   # where the wrapped module's keys sit (checkpoint/base_state.py)
    one_active_adapter = True   # PEFT: one adapter's rows at a time per wrapper (rewrite/modules_to_save.py)
    reported_layer = "token_adapter"   # get_layer_status reports the rows layer, as PEFT

    def __init__(self, module: nn.Module):
        super().__init__()
        self.token_adapter = WrappedTokensLayer(module)

    # -- what it wraps ---------------------------------------------------------------------------------
    @property
    def original_module(self) -> nn.Module:
        """PEFT's attribute: the wrapped module (the rows layer's base; not registered twice)."""
        return self.token_adapter.base_layer

    @property
    def base_layer(self) -> nn.Module:
        return self.token_adapter.base_layer

    def get_base_layer(self) -> nn.Module:
        return self.token_adapter.get_base_layer()

    @property
    def weight(self) -> torch.Tensor:
        """The weight the forward uses: the base's with the active adapters' rows (PEFT's merged weights)."""
        layer, base = self.token_adapter, self.get_base_layer()
        names = [n for n in layer._active_adapters if n in layer.token_indices]
        if layer._disable_adapters or layer.merged_adapters or not names:
            return base.weight
        return replaced_weight(base.weight, layer._swap_list(names, base.weight.device))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("token_adapter", "_modules", "_parameters", "_buffers"):
                raise
            return getattr(self.get_base_layer(), name)   # num_embeddings, padding_idx, ...: the base's

    # -- the adapter-layer protocol, answered by the rows layer -----------------------------------------
    def update_layer(self, adapter_name: str, config, tied_to: Optional[nn.Module] = None, **params) -> None:
        fqn = self.__dict__.get("_surgery_fqn")
        if fqn is not None:
            self.token_adapter.__dict__["_surgery_fqn"] = fqn
        leader = tied_to.token_adapter if isinstance(tied_to, TrainableTokensWrapper) else tied_to
        self.token_adapter.update_layer(adapter_name, config, tied_to=leader, **params)

    def adapter_containers(self):
        """The rows' containers under their paths from the wrapper; none for a follower (its leader saves them)."""
        if self.token_adapter.follows is not None:
            return
        for container, holder in self.token_adapter.adapter_containers():
            yield f"token_adapter.{container}", holder

    def adapter_names(self) -> list[str]:
        return self.token_adapter.adapter_names()

    def _all_available_adapter_names(self) -> list[str]:
        return sorted(self.adapter_names())

    def _get_available_adapters(self) -> set[str]:
        return set(self.adapter_names())

    @property
    def active_adapters(self) -> list[str]:
        return self.token_adapter.active_adapters

    @property
    def active_adapter(self) -> Union[str, list[str]]:
        return self.token_adapter.active_adapter

    @property
    def merged_adapters(self) -> list[str]:
        return self.token_adapter.merged_adapters

    @property
    def merged(self) -> bool:
        return self.token_adapter.merged

    @property
    def _disable_adapters(self) -> bool:
        return self.token_adapter._disable_adapters

    @property
    def disable_adapters(self) -> bool:
        return self.token_adapter.disable_adapters

    def set_adapter(self, adapter_names: Union[str, Iterable[str]], trainable: bool = True) -> None:
        self.token_adapter.set_adapter(adapter_names, trainable=trainable)

    def enable_adapters(self, enabled: bool) -> None:
        self.token_adapter.enable_adapters(enabled)

    def delete_adapter(self, adapter_name: str) -> None:
        self.token_adapter.delete_adapter(adapter_name)

    def check_merge(self, adapter_names: Optional[list[str]] = None) -> None:
        self.token_adapter.check_merge(adapter_names)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        self.token_adapter.merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def unmerge(self) -> None:
        self.token_adapter.unmerge()

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        batch = self.__dict__.get("_batch_adapters")
        layer = self.token_adapter
        if batch is None or layer.runs_base_only():
            return layer(x, *args, **kwargs)
        # one adapter per sample (adapter_names=): each adapter's rows on its own samples
        rows = names_for_rows(batch, x.shape[0])
        out = layer.forward_with(x, [], *args, **kwargs)
        for name in dict.fromkeys(rows):
            if name in layer.token_indices:
                index = torch.tensor([i for i, a in enumerate(rows) if a == name], device=x.device)
                out = out.index_copy(0, index, layer.forward_with(x[index], [name], *args, **kwargs))
        return out
