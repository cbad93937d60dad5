"""The Plan: pure data describing every rewrite, before anything changes. Serialises to JSON and back."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from .table import render


@dataclass(frozen=True)
class Rewrite:
    """One module to wrap (or, when already wrapped, to receive one more adapter)."""

    path: str
    base_type: str
    base_shape: tuple
    method: str
    adapter_name: str
    layer_class: str              # qualified name of the adapter layer class (one of the method's handlers)
    action: str = "wrap"          # "wrap" a plain module, or "add" an adapter to an adapter layer
    added_params: int = 0
    params: dict = field(default_factory=dict)   # the method's per-module parameters (rank, alpha, ...)
    base_format: str = ""         # a quantized base's storage ("nf4, block 64"); empty for a plain one
    parameter: str = ""           # a parameter target (target_parameters): its name on the module at `path`;
                                  # base_shape is then the parameter's shape

    @property
    def target(self) -> str:
        """What is adapted: the module path, or "<path>.<parameter>" for a parameter target."""
        return f"{self.path}.{self.parameter}" if self.parameter else self.path

    def __getitem__(self, key: str):
        return self.params[key]


@dataclass(frozen=True)
class SavedModule:
    """A module trained in full and saved with the adapter (modules_to_save)."""

    path: str
    base_type: str
    params: int
    tied_to: Optional[str] = None   # shares the copy of this module (a tie kept: ensure_weight_tying); params 0


@dataclass(frozen=True)
class AuxiliaryWrap:
    """A module a config wraps besides the method's layers, to train part of it (spec.auxiliary): e.g. a few
    rows of an embedding. `tied_to` in params: the path of the wrap whose state this one shares."""

    path: str
    base_type: str
    wrapper: str                  # qualified name of the wrapper class (one of the spec's auxiliary wrappers)
    kind: str                     # what is trained, in words (the audit table's method column)
    action: str = "wrap"          # "wrap" a plain module, or "add" the adapter to a wrapper already there
    added_params: int = 0
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Injection:
    """State a method injects instead of wrapping a module (virtual inputs): where it goes, its parameters."""

    path: str          # the module that holds the state, e.g. <injected attribute>.default
    kind: str          # what is injected where, in words
    shape: tuple
    params: int


@dataclass
class Plan:
    adapter_name: str
    peft_type: str
    task_type: Optional[str]
    rewrites: list[Rewrite]
    modules_to_save: list[SavedModule] = field(default_factory=list)
    trainable_bias_params: int = 0
    base_params: int = 0              # every parameter of the model before the rewrite (tied counted once)
    config: dict[str, Any] = field(default_factory=dict)   # the resolved config, as saved
    rules: str = ""                    # the compiled rule, in words
    warnings: list[str] = field(default_factory=list)
    applied: bool = False
    injections: list[Injection] = field(default_factory=list)
    columns: list = field(default_factory=list)   # audit table: [header, params key] per method column
    flags: list = field(default_factory=list)     # [label, params key]: shown after the method name when true
    # bytes to fit (plan/memory.py), filled when the base has quantized layers: base, adapter, training extra
    memory: dict = field(default_factory=dict)
    # changes to the model's structure made before the rewrites (spec.restructure), as data: paths in `rewrites`
    # are those of the changed model
    structure: list = field(default_factory=list)
    auxiliaries: list[AuxiliaryWrap] = field(default_factory=list)

    # -- totals (PEFT's print_trainable_parameters figures after the rewrite) ---------------------------
    @property
    def added_params(self) -> int:
        return (sum(r.added_params for r in self.rewrites) + sum(m.params for m in self.modules_to_save)
                + sum(i.params for i in self.injections) + sum(a.added_params for a in self.auxiliaries))

    @property
    def trainable_params(self) -> int:
        return self.added_params + self.trainable_bias_params

    @property
    def all_params(self) -> int:
        return self.base_params + self.added_params

    def totals_line(self) -> str:
        """PEFT's exact print_trainable_parameters line for the model after this plan."""
        return trainable_line(self.trainable_params, self.all_params)

    def paths(self) -> list[str]:
        """The modules rewritten as modules (PEFT's targeted_module_names); parameter targets are not listed."""
        return [r.path for r in self.rewrites if not r.parameter]

    def parameter_paths(self) -> list[str]:
        """The parameters adapted ("<module>.<parameter>", PEFT's targeted_parameter_names)."""
        return [r.target for r in self.rewrites if r.parameter]

    # -- JSON ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["totals"] = {"trainable_params": self.trainable_params, "all_params": self.all_params,
                          "added_params": self.added_params}
        return data

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        data = dict(data)
        data.pop("totals", None)
        rewrites = [Rewrite(**{**r, "base_shape": tuple(r["base_shape"])}) for r in data.pop("rewrites")]
        saved = [SavedModule(**m) for m in data.pop("modules_to_save", [])]
        injected = [Injection(**{**i, "shape": tuple(i["shape"])}) for i in data.pop("injections", [])]
        extra = [AuxiliaryWrap(**a) for a in data.pop("auxiliaries", [])]
        return cls(rewrites=rewrites, modules_to_save=saved, injections=injected, auxiliaries=extra, **data)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    def table(self, fmt: str = "table", summary: bool = False) -> str:
        """The audit table (fmt: table, markdown or json); summary folds repeated per-layer rows into one."""
        return render(self, fmt, summary)

    def __str__(self) -> str:
        return self.table()


def trainable_line(trainable: int, total: int) -> str:
    percent = 100 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {percent:.4f}"
