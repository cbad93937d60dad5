"""SharedBuffers: one tensor per adapter, held as buffers named by the adapter (PEFT's BufferDict).

A method's state shared across its layers (VeRA's projections) lives here, on the tuner; state-dict keys are
`<holder>.<adapter>`. It is also a mapping, with PEFT's BufferDict API (`BufferDict({...}, persistent=...)`,
item access and assignment, update, keys/values/items), which code written against PEFT uses.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Iterable, Optional, Union

import torch
from torch import nn


class SharedBuffers(nn.Module):
    def __init__(self, buffers: Optional[Union[Mapping, Iterable]] = None, persistent: bool = False):
        super().__init__()
        self.persistent = persistent   # for tensors assigned by item (PEFT's attribute)
        if buffers is not None:
            self.update(buffers)

    # -- surgery's own use: each adapter's tensor with its own persistence ------------------------------
    def add(self, adapter_name: str, tensor: torch.Tensor, persistent: bool) -> None:
        self.register_buffer(adapter_name, tensor, persistent=persistent)

    def remove(self, adapter_name: str) -> None:
        self._buffers.pop(adapter_name, None)
        self._non_persistent_buffers_set.discard(adapter_name)

    def is_persistent(self, adapter_name: str) -> bool:
        return adapter_name in self._buffers and adapter_name not in self._non_persistent_buffers_set

    # -- the mapping (PEFT's BufferDict) ---------------------------------------------------------------
    def __getitem__(self, adapter_name: str) -> torch.Tensor:
        return self._buffers[adapter_name]

    def __setitem__(self, adapter_name: str, tensor: torch.Tensor) -> None:
        # a tensor replaced in place (holder[name] += 1) keeps its persistence; a new one takes the holder's
        persistent = self.is_persistent(adapter_name) if adapter_name in self._buffers else self.persistent
        self.register_buffer(adapter_name, tensor, persistent=persistent)

    def __delitem__(self, adapter_name: str) -> None:
        self.remove(adapter_name)

    def __contains__(self, adapter_name: str) -> bool:
        return adapter_name in self._buffers

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self):
        return iter(self._buffers.keys())

    def keys(self):
        return self._buffers.keys()

    def values(self):
        return self._buffers.values()

    def items(self):
        return self._buffers.items()

    def update(self, buffers: Union[Mapping, Iterable]) -> None:
        """Add or replace tensors from a mapping (another SharedBuffers too) or (name, tensor) pairs."""
        if isinstance(buffers, (Mapping, SharedBuffers)):
            buffers = buffers.items()
        elif not isinstance(buffers, Iterable):
            raise TypeError(f"BufferDict.update should be called with an iterable of key/value pairs, but got "
                            f"{type(buffers).__name__}")
        for index, pair in enumerate(buffers):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"BufferDict update sequence element #{index} should be a pair (name, tensor); "
                                 f"got {pair!r}")
            self[pair[0]] = pair[1]

    def extra_repr(self) -> str:
        return ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in self._buffers.items())
