"""Pure selectors: (fqn, node facts) -> bool, with PEFT's exact matching semantics.

  Names(["q_proj"])      exact name, or a suffix at a '.' boundary  ("x.q_proj" yes, "x.xq_proj" no)
  Regex("...")           re.fullmatch on the qualified name
  Types(["Linear"])      class name of the module or of any base class
  AllLinear(head)        every nn.Linear / transformers Conv1D except the output head
  Layers([0, 3], ["layers"])  the module sits in one of these numbered layers
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from torch import nn

from ..graph.kinds import is_linear_like
from ..graph.walk import base_modules, is_adapter_layer
from ..tasks import task_for


@dataclass(frozen=True)
class Names:
    names: tuple[str, ...]

    def __call__(self, fqn: str, node: dict) -> bool:
        return any(fqn == n or fqn.endswith("." + n) for n in self.names)

    def which(self, fqn: str) -> Optional[str]:
        """The first name that selects fqn (used to report names that select nothing)."""
        return next((n for n in self.names if fqn == n or fqn.endswith("." + n)), None)

    def describe(self) -> str:
        return "names " + ", ".join(self.names)


@dataclass(frozen=True)
class Regex:
    pattern: str

    def __call__(self, fqn: str, node: dict) -> bool:
        return re.fullmatch(self.pattern, fqn) is not None

    def describe(self) -> str:
        return f"regex {self.pattern!r}"


@dataclass(frozen=True)
class Types:
    type_names: tuple[str, ...]

    def __call__(self, fqn: str, node: dict) -> bool:
        classes = type(_base_of(node["module"])).__mro__
        return any(c.__name__ in self.type_names for c in classes)

    def describe(self) -> str:
        return "types " + ", ".join(self.type_names)


@dataclass(frozen=True)
class AllLinear:
    excluded: frozenset[str]

    def __call__(self, fqn: str, node: dict) -> bool:
        return fqn != "" and fqn not in self.excluded and is_linear_like(_base_of(node["module"]))

    def describe(self) -> str:
        head = ", ".join(sorted(self.excluded)) or "none"
        return f"all-linear (output head excluded: {head})"


@dataclass(frozen=True)
class Layers:
    indexes: tuple[int, ...]
    patterns: tuple[str, ...] = ()

    def index_of(self, fqn: str) -> Optional[int]:
        if not self.patterns:
            match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", fqn)
        else:
            match = None
            for pattern in self.patterns:
                match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", fqn)
                if match is not None:
                    break
        return int(match.group("idx")) if match else None

    def __call__(self, fqn: str, node: dict) -> bool:
        return self.index_of(fqn) in self.indexes

    def describe(self) -> str:
        where = f" of {', '.join(self.patterns)}" if self.patterns else ""
        return f"layers {list(self.indexes)}{where}"


def pattern_key(patterns: Sequence[str], fqn: str) -> Optional[str]:
    """PEFT's rank_pattern/alpha_pattern lookup: the first key k with re.match(r'(.*\\.)?(k)$', fqn)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", fqn):
            return key
    return None


def pattern_value(patterns: Optional[dict], fqn: str, default):
    """The value `patterns` (a rank_pattern / alpha_pattern) gives module `fqn`, else `default`."""
    patterns = patterns or {}
    key = pattern_key(patterns, fqn)
    return default if key is None else patterns[key]


def output_head_names(model: nn.Module, task_type) -> frozenset[str]:
    """Modules all-linear must skip: the output embeddings, or a classifier head for SEQ_CLS (as PEFT)."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    candidates = [head] if head is not None else []
    if head is None:
        candidates = [getattr(model, n, None) for n in task_for(task_type).output_heads]
        candidates = [c for c in candidates if c is not None][:1]
    if not candidates:
        return frozenset()
    # named_modules' names, from a walk that skips adapters' own parts (it would grow with every adapter added);
    # a head found nowhere else is looked for everywhere
    found = frozenset(name for name, module in base_modules(model) if any(module is c for c in candidates))
    return found or frozenset(name for name, module in model.named_modules() if any(module is c for c in candidates))


def _base_of(module: nn.Module) -> nn.Module:
    """The module an adapter layer wraps (the module itself when it is not one)."""
    return module.get_base_layer() if is_adapter_layer(module) else module
