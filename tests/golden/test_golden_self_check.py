"""The committed golden fixtures are self-consistent: loading each one with the real peft reproduces the
stored outputs. Regenerates nothing (see make_golden.py for that)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from tests.golden.cases import CASES
from tests.golden.peft_oracle import base_outputs, case_names, load_case, peft_outputs

import peft  # noqa: E402  (a test dependency: the oracle)

EXPECTED_CASES = set(CASES)
PEFT_TYPE_OF_CONFIG = {cls.__name__: str(getattr(t, "value", t)) for t, cls in peft.PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def test_all_cases_present():
    assert set(case_names()) == EXPECTED_CASES


def _keys(path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return sorted(f.keys())


@pytest.mark.parametrize("name", sorted(EXPECTED_CASES))
def test_fixture_files(name):
    case = load_case(name)
    meta = case.meta
    assert meta["peft_version"] == "0.21.2"
    for adapter, sub in meta["adapter_subdirs"].items():
        d = case.adapter_dir / sub
        assert (d / "adapter_config.json").is_file(), d
        assert (d / "adapter_model.safetensors").is_file(), d
        cfg = json.loads((d / "adapter_config.json").read_text())
        assert cfg["peft_type"] == PEFT_TYPE_OF_CONFIG[meta["config_class"]]
        assert cfg["task_type"] == meta["task_type"]
    assert (case.adapter_dir / "README.md").is_file()
    assert meta["state_keys"] == _keys(case.adapter_dir / "adapter_model.safetensors")
    for adapter, keys in meta.get("state_keys_by_adapter", {}).items():
        assert keys == _keys(case.adapter_dir / meta["adapter_subdirs"][adapter] / "adapter_model.safetensors")
    assert sorted(case.expected) == meta["output_tensors"]
    assert meta["trainable_line"].startswith("trainable params: ")


@pytest.mark.filterwarnings("ignore:Careful, disabling adapter layers")
@pytest.mark.parametrize("name", sorted(EXPECTED_CASES))
def test_peft_reproduces_stored_outputs(name):
    case = load_case(name)
    got = peft_outputs(case)
    got.update(base_outputs(case))
    assert sorted(got) == sorted(case.expected)
    for key, want in case.expected.items():
        torch.testing.assert_close(got[key], want, atol=1e-6, rtol=0, msg=lambda m, key=key: f"{name} {key}: {m}")
    for key in case.meta["output_keys"]:  # the adapters are not the identity
        assert (case.expected[key] - case.expected[f"{key}.base"]).abs().max() > 1e-3
