"""Golden fixtures written by real peft 0.21.2: surgery loads every case and reproduces every stored output, and
what surgery saves again is what peft wrote (keys, config) and loads in peft with the same outputs."""
from __future__ import annotations

import contextlib
import copy
import io
import json

import pytest
import torch
from safetensors import safe_open

from tests.support import helpers  # noqa: F401  (one torch thread: see helpers.py)
import surgery
from tests.golden.cases import CASES as GOLDEN_CASES
from tests.golden.peft_oracle import case_names, forward, load_case, peft_outputs

CASES = case_names()


def tolerance(case) -> float:
    return case.meta["tolerance"]


def load_with_surgery(case, cls=None):
    cls = cls or getattr(surgery, case.meta["peft_model_class"])
    names = case.adapter_names
    model = cls.from_pretrained(case.build_base(), str(case.adapter_dir), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(case.adapter_dir / case.meta["adapter_subdirs"][name]), name)
    model.set_adapter(names[0])
    return model.eval()


def surgery_outputs(case, model) -> dict[str, torch.Tensor]:
    """The same entries golden.peft_oracle.adapted_outputs computes with peft, computed with surgery."""
    names = case.adapter_names
    out: dict[str, torch.Tensor] = {}
    if len(names) > 1:
        for name in names:
            model.set_adapter(name)
            out.update(forward(case, model, case.inputs, suffix=f".{name}"))
    model.set_adapter(names[0])
    out.update(forward(case, model, case.inputs))
    with model.disable_adapter():
        out.update(forward(case, model, case.inputs, suffix=".disabled"))
    merged = copy.deepcopy(model).merge_and_unload()
    out.update(forward(case, merged.eval(), case.inputs, suffix=".merged"))
    return out


def st_keys(path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return sorted(f.keys())


def test_every_golden_case_is_covered():
    assert set(CASES) == set(GOLDEN_CASES)


@pytest.mark.parametrize("name", CASES)
def test_surgery_reproduces_every_stored_output(name):
    case = load_case(name)
    model = load_with_surgery(case)
    assert type(model).__name__ == case.meta["peft_model_class"]
    got = surgery_outputs(case, model)
    expected = {k: v for k, v in case.expected.items() if not k.endswith(".base")}
    assert set(got) == set(expected)
    tol = tolerance(case)
    for key, want in expected.items():
        diff = (got[key] - want).abs().max().item()
        assert diff <= tol, f"{key}: max |diff| {diff:.3g} > {tol}"
    # the adapter really is loaded (not left at its identity init)
    base = {k: v for k, v in case.expected.items() if k.endswith(".base")}
    for key, value in base.items():
        assert (got[key.removesuffix(".base")] - value).abs().max() > 1e-3


@pytest.mark.parametrize("name", CASES)
def test_generic_peft_model_from_pretrained_picks_the_task_class(name):
    case = load_case(name)
    model = surgery.PeftModel.from_pretrained(case.build_base(), str(case.adapter_dir),
                                              adapter_name=case.adapter_names[0])
    assert type(model).__name__ == case.meta["peft_model_class"]
    assert not any(p.requires_grad for p in model.parameters())  # loaded for inference by default
    key = case.meta["output_keys"][0]
    got = forward(case, model.eval(), case.inputs)[key]
    if len(case.adapter_names) == 1:
        assert (got - case.expected[key]).abs().max() <= tolerance(case)


@pytest.mark.parametrize("name", CASES)
def test_surgery_trainable_line_equals_peft(name):
    case = load_case(name)
    names = case.adapter_names
    cls = getattr(surgery, case.meta["peft_model_class"])
    model = cls.from_pretrained(case.build_base(), str(case.adapter_dir), adapter_name=names[0], is_trainable=True)
    for n in names[1:]:
        model.load_adapter(str(case.adapter_dir / case.meta["adapter_subdirs"][n]), n, is_trainable=True)
    model.set_adapter(names[0])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        model.print_trainable_parameters()
    assert buf.getvalue().strip() == case.meta["trainable_line"]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", CASES)
def test_surgery_saves_what_peft_wrote_and_peft_loads_it(name, tmp_path):
    case = load_case(name)
    model = load_with_surgery(case)
    ours = surgery_outputs(case, model)
    model.save_pretrained(str(tmp_path))

    # the same tensor keys as peft wrote
    assert st_keys(tmp_path / "adapter_model.safetensors") == case.meta["state_keys"]
    for adapter, keys in case.meta.get("state_keys_by_adapter", {}).items():
        sub = case.meta["adapter_subdirs"][adapter]
        assert st_keys(tmp_path / sub / "adapter_model.safetensors") == keys, adapter
    # the same tensors, too (they were loaded from peft's file and saved back)
    with safe_open(str(case.adapter_dir / "adapter_model.safetensors"), framework="pt") as theirs, \
            safe_open(str(tmp_path / "adapter_model.safetensors"), framework="pt") as mine:
        for key in theirs.keys():
            assert torch.equal(theirs.get_tensor(key), mine.get_tensor(key)), key

    # the same adapter_config.json keys and values (except the writer's version)
    for adapter, sub in case.meta["adapter_subdirs"].items():
        theirs = json.loads((case.adapter_dir / sub / "adapter_config.json").read_text())
        mine = json.loads((tmp_path / sub / "adapter_config.json").read_text())
        assert set(mine) == set(theirs), adapter
        diff = {k: (mine[k], theirs[k]) for k in theirs if k != "peft_version" and mine[k] != theirs[k]
                and not (isinstance(theirs[k], list) and sorted(mine[k]) == sorted(theirs[k]))}
        assert diff == {}, adapter

    # and real peft loads surgery's folder with the same outputs
    oracle = peft_outputs(case, adapter_dir=tmp_path)
    tol = tolerance(case)
    assert set(oracle) <= set(ours)
    for key, want in oracle.items():
        assert (ours[key] - want).abs().max() <= tol, key
        assert (case.expected[key] - want).abs().max() <= tol, key
