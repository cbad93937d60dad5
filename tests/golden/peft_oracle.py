"""Helpers for tests that compare `surgery` against the real `peft` (a test-only oracle).

Import as ``from tests.golden.peft_oracle import ...`` (the tests are a package; run from the repository root).

(a) ``load_case(name)`` reads a committed golden case: ``case.json``, ``io.safetensors`` (inputs and
    expected outputs) and can rebuild the base model (builder from ``tests/tiny_models.py`` + the
    committed ``base.safetensors`` loaded with ``strict=True``; RNG reproducibility is not relied on).
(b) ``peft_outputs(case, adapter_dir)`` loads an adapter folder (e.g. one written by ``surgery``) with
    ``peft.PeftModel.from_pretrained`` onto a fresh base model and returns the same output keys as
    the fixture holds (``logits``, ``logits.<adapter>``, ``logits.disabled``, ``logits.merged``, ...).

The same forward/outputs code is used by ``make_golden.py`` to write the fixtures, so a fixture
loaded with peft reproduces its stored outputs exactly.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

GOLDEN_DIR = Path(__file__).resolve().parent
FIXTURES = GOLDEN_DIR / "fixtures"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.support import tiny_models  # noqa: E402


@dataclass
class GoldenCase:
    """One golden case folder ``tests/golden/<name>/``."""

    name: str
    path: Path
    meta: dict[str, Any]                       # the parsed case.json
    inputs: dict[str, torch.Tensor] = field(repr=False)    # tensors named in meta["inputs"]["names"]
    expected: dict[str, torch.Tensor] = field(repr=False)  # every other tensor of io.safetensors

    @property
    def adapter_dir(self) -> Path:
        """The folder peft's ``save_pretrained`` wrote (non-default adapters in subfolders)."""
        return self.path / "adapter"

    @property
    def adapter_names(self) -> list[str]:
        return list(self.meta["adapter_names"])

    def build_base(self) -> torch.nn.Module:
        return build_base_model(self)


def case_names() -> list[str]:
    """Names of all committed cases (folders holding a case.json), sorted."""
    return sorted(p.parent.name for p in FIXTURES.glob("*/case.json"))


def load_case(name_or_path: str | os.PathLike) -> GoldenCase:
    """Read ``case.json`` and ``io.safetensors`` of a case (by name, or by path to its folder)."""
    path = Path(name_or_path)
    if not path.is_absolute() and not (path / "case.json").exists():
        path = FIXTURES / str(name_or_path)
    meta = json.loads((path / "case.json").read_text())
    io = load_file(str(path / "io.safetensors"))
    input_names = list(meta["inputs"]["names"])
    inputs = {k: io[k] for k in input_names}
    expected = {k: v for k, v in io.items() if k not in inputs}
    return GoldenCase(name=path.name, path=path, meta=meta, inputs=inputs, expected=expected)


def build_base_model(case: GoldenCase | dict) -> torch.nn.Module:
    """Fresh base model: ``tiny_models.<builder>(seed=..., **builder_kwargs)`` then, if the case says so,
    ``load_state_dict(base.safetensors, strict=True)``. Returned in eval mode."""
    meta = case.meta if isinstance(case, GoldenCase) else case
    builder = getattr(tiny_models, meta["builder"])
    model = builder(seed=meta["seed"], **meta.get("builder_kwargs", {}))
    base_load = meta.get("base_load", {})
    if base_load.get("load_state_dict", True) and isinstance(case, GoldenCase):
        state = load_file(str(case.path / base_load.get("file", "base.safetensors")))
        model.load_state_dict(state, strict=base_load.get("strict", True))
    return model.eval()


def forward(case: GoldenCase | dict, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
            suffix: str = "") -> dict[str, torch.Tensor]:
    """Run ``model`` on the case inputs under ``torch.no_grad()`` and return ``{output_key + suffix: tensor}``.

    ``meta["inputs"]["call"]`` is "kwargs" (``model(**inputs)``) or "positional" (``model(*inputs)``, in the
    order of ``meta["inputs"]["names"]``). ``meta["output_keys"]`` names the outputs; a model that returns a
    bare tensor has it stored under the single output key (``"logits"``)."""
    meta = case.meta if isinstance(case, GoldenCase) else case
    names = meta["inputs"]["names"]
    with torch.no_grad():
        if meta["inputs"]["call"] == "positional":
            out = model(*[inputs[n] for n in names])
        else:
            out = model(**{n: inputs[n] for n in names})
    keys = meta["output_keys"]
    if isinstance(out, torch.Tensor):
        assert len(keys) == 1, keys
        result = {keys[0]: out}
    else:
        result = {k: out[k] for k in keys}
    return {k + suffix: v.detach().clone().contiguous() for k, v in result.items()}


def adapted_outputs(case: GoldenCase | dict, peft_model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """All expected-output entries for a peft model that holds every adapter of the case.

    Keys (for output key ``logits``; same pattern for ``last_hidden_state`` etc.):
      ``logits``               first adapter of ``adapter_names`` active ("default")
      ``logits.<adapter>``     only for cases with several adapters, after ``set_adapter(<adapter>)``
      ``logits.disabled``      first adapter active, inside ``with model.disable_adapter():``
      ``logits.merged``        ``copy.deepcopy(model).merge_and_unload()`` with the first adapter active
    """
    meta = case.meta if isinstance(case, GoldenCase) else case
    names = meta["adapter_names"]
    first = names[0]
    peft_model.eval()
    out: dict[str, torch.Tensor] = {}
    if len(names) > 1:
        for name in names:
            peft_model.set_adapter(name)
            out.update(forward(meta, peft_model, inputs, suffix=f".{name}"))
    peft_model.set_adapter(first)
    out.update(forward(meta, peft_model, inputs))
    with peft_model.disable_adapter():
        out.update(forward(meta, peft_model, inputs, suffix=".disabled"))
    merged = copy.deepcopy(peft_model).merge_and_unload()
    out.update(forward(meta, merged.eval(), inputs, suffix=".merged"))
    return out


def load_peft_model(case: GoldenCase, adapter_dir: str | os.PathLike | None = None):
    """Fresh base model + ``peft.PeftModel.from_pretrained(base, adapter_dir)`` for the first adapter, then
    ``load_adapter(adapter_dir / <name>, adapter_name=<name>)`` for the others. Checks that peft picked the
    class named in ``case.json["peft_model_class"]``. Returns the model in eval mode, first adapter active."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir) if adapter_dir is not None else case.adapter_dir
    names = case.adapter_names
    base = build_base_model(case)
    model = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(adapter_dir / name), adapter_name=name)
    model.set_adapter(names[0])
    expected_cls = case.meta["peft_model_class"]
    if type(model).__name__ != expected_cls:
        raise AssertionError(f"peft loaded {type(model).__name__}, case expects {expected_cls}")
    return model.eval()


def peft_outputs(case: GoldenCase, adapter_dir: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Outputs real peft computes for ``adapter_dir`` (default: the case's committed ``adapter/``) on the
    case inputs; same keys as ``case.expected`` except the ``*.base`` entries (base model, no peft)."""
    model = load_peft_model(case, adapter_dir)
    return adapted_outputs(case, model, case.inputs)


def base_outputs(case: GoldenCase) -> dict[str, torch.Tensor]:
    """Outputs of the bare base model (no peft): the ``<key>.base`` entries."""
    return forward(case, build_base_model(case), case.inputs, suffix=".base")
