"""InjectedState: the one object that holds the state a method injects instead of wrapping modules.

Some methods add inputs, not layers: their encoders, token ids and where each input goes are kept here, for
every adapter of that method on one PeftModel, instead of as attributes scattered over the PeftModel. It is a
ModuleDict (adapter -> module) registered on the PeftModel under `attribute`, PEFT's attribute name (so
`peft_model.<attribute>["default"]` and the state-dict keys are PEFT's); the names in `exposed` read as
attributes of the PeftModel (PEFT's names for them).

The flow is the pipeline's: the planner plans, `stage` builds what the adapter needs without changing anything
(it may fail), the rewriter applies the plan, then `attach` installs the staged state (it must not fail).
"""
from __future__ import annotations

from typing import Any, ClassVar

from torch import nn


class InjectedState(nn.ModuleDict):
    attribute: ClassVar[str] = "injected"
    exposed: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.__dict__["host"] = None   # the PeftModel (kept out of _modules: not a child)

    # -- the flow --------------------------------------------------------------------------------------
    def stage(self, model: nn.Module, plan, config) -> Any:  # pragma: no cover - abstract
        """Build the adapter's state for `model` (nothing changes); raise if it cannot be built."""
        raise NotImplementedError

    def attach(self, adapter_name: str, staged: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def detach(self, adapter_name: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- what the PeftModel delegates ------------------------------------------------------------------
    def runs(self, adapter_name: str) -> bool:
        """Whether calls of the PeftModel go through this state while `adapter_name` is active."""
        return adapter_name in self

    def forward_call(self, args: tuple, kwargs: dict):  # pragma: no cover - abstract
        raise NotImplementedError

    def generate_call(self, args: tuple, kwargs: dict):  # pragma: no cover - abstract
        raise NotImplementedError

    def checkpoint_entries(self, adapter_name: str) -> dict:  # pragma: no cover - abstract
        """{checkpoint key: (tensor to save, tensor to load into)} of one adapter."""
        raise NotImplementedError
