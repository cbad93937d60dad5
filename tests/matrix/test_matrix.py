"""The method matrix: every registered method x tiny models x the operations PEFT users rely on, each checked
against the real peft (the oracle) or against the base model.

    forward      surgery's outputs equal peft's for the same adapter weights (moved with the checkpoint functions)
    disable      disable_adapter() gives the base model's outputs bit for bit
    merge        merge_and_unload keeps the outputs (1e-4) and gives peft's merged weights; unmerge restores W
    save/load    surgery's folder loads in peft, peft's in surgery, with equal outputs
    delete       delete_adapter leaves no parameter, buffer or key of the adapter behind
    several      a second adapter, switched to with set_adapter, equals peft's
    mixed batch  adapter_names= equals per-sample forwards (where PEFT supports it), else a clear refusal

A new method is one row in rows.py.
"""
from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch

import surgery
from surgery.errors import SurgeryError
from tests.support.helpers import MODELS, max_diff, run

from .rows import ROWS

CASES = [pytest.param(row, name, id=f"{row.id}-{name}") for row in ROWS for name in row.models]


def _config(lib, row, kwargs):
    return getattr(lib, row.config)(**kwargs)


def _perturb(model, adapter: str, row, seed: int = 0) -> None:
    """Give adapter `adapter`'s parameters (every name with its segment) seeded non-identity values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".{adapter}." not in f".{name}.":
                continue
            noise = torch.randn(p.shape, generator=g).to(p.dtype) * row.std
            if any(marker in name for marker in row.scale):
                p.mul_(1 + noise)
            else:
                p.copy_(noise)


def _pair(row, name: str, seed: int = 0):
    """(surgery model, peft model, base outputs) with the same perturbed adapter 'default'."""
    builder = MODELS[name][0]
    kwargs = row.models[name]
    base_out = run(builder(), name)
    ours = surgery.get_peft_model(builder(), _config(surgery, row, kwargs))
    _perturb(ours, "default", row, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(builder(), _config(peft, row, kwargs))
        peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours))
    return ours.eval(), theirs.eval(), base_out


@pytest.mark.parametrize("row, name", CASES)
def test_forward_equals_peft(row, name):
    ours, theirs, base_out = _pair(row, name)
    got, want = run(ours, name), run(theirs, name)
    assert max_diff(got, want) <= row.tolerance
    assert got.shape != base_out.shape or max_diff(got, base_out) > 1e-3   # the adapter is not the identity


@pytest.mark.parametrize("row, name", CASES)
def test_disable_is_bit_identical_to_the_base(row, name):
    ours, _, base_out = _pair(row, name)
    with ours.disable_adapter():
        assert torch.equal(run(ours, name), base_out)
    assert not torch.equal(run(ours, name), base_out)


@pytest.mark.parametrize("row, name", CASES)
def test_merge_keeps_outputs_and_equals_peft(row, name):
    ours, theirs, _ = _pair(row, name)
    adapted = run(ours, name)
    if not row.merges:
        with pytest.raises(SurgeryError, match="merge"):
            ours.merge_and_unload()
        return
    before = {k: v.clone() for k, v in ours.get_base_model().state_dict().items() if "base_layer" in k}
    ours.merge_adapter()
    assert max_diff(run(ours, name), adapted) <= 1e-4
    ours.unmerge_adapter()
    after = ours.get_base_model().state_dict()
    assert max(max_diff(after[k], v) for k, v in before.items()) <= 1e-5
    merged_ours = copy.deepcopy(ours).merge_and_unload()
    merged_theirs = copy.deepcopy(theirs).merge_and_unload()
    assert max_diff(run(merged_ours, name), adapted) <= 1e-4
    mine, peft_weights = merged_ours.state_dict(), merged_theirs.state_dict()
    assert set(mine) == set(peft_weights)
    assert max(max_diff(mine[k], peft_weights[k]) for k in mine) <= row.tolerance


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("row, name", CASES)
def test_save_and_load_both_ways(row, name, tmp_path):
    ours, theirs, _ = _pair(row, name)
    builder = MODELS[name][0]
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    in_peft = peft.PeftModel.from_pretrained(builder(), str(tmp_path / "ours")).eval()
    in_surgery = surgery.PeftModel.from_pretrained(builder(), str(tmp_path / "theirs")).eval()
    assert max_diff(run(in_peft, name), run(ours, name)) <= row.tolerance
    assert max_diff(run(in_surgery, name), run(theirs, name)) <= row.tolerance


def _inventory(model) -> dict[str, tuple]:
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state.update({f"param:{k}": tuple(p.shape) for k, p in model.named_parameters()})
    state.update({f"buffer:{k}": tuple(b.shape) for k, b in model.named_buffers()})
    return state


@pytest.mark.parametrize("row, name", CASES)
def test_delete_adapter_leaves_nothing_behind(row, name):
    ours, _, _ = _pair(row, name)
    before = _inventory(ours)
    second = row.second.get(name, row.models[name])
    ours.add_adapter("other", _config(surgery, row, second))
    assert any(".other." in f".{k}." for k in _inventory(ours))
    ours.delete_adapter("other")
    assert _inventory(ours) == before
    assert list(ours.peft_config) == ["default"]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("row, name", CASES)
def test_a_second_adapter_equals_peft(row, name):
    ours, theirs, _ = _pair(row, name)
    second = row.second.get(name, row.models[name])
    ours.add_adapter("other", _config(surgery, row, second))
    theirs.add_adapter("other", _config(peft, row, second))
    _perturb(ours, "other", row, seed=1)
    peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours, adapter_name="other"),
                                   adapter_name="other")
    default_out = run(ours, name)
    for model in (ours, theirs):
        model.set_adapter("other")
    got = run(ours, name)
    assert max_diff(got, run(theirs, name)) <= row.tolerance
    assert max_diff(got, default_out) > 1e-3
    ours.set_adapter("default")
    assert torch.equal(run(ours, name), default_out)


@pytest.mark.parametrize("row, name", CASES)
def test_mixed_batch(row, name):
    ours, _, base_out = _pair(row, name)
    second = row.second.get(name, row.models[name])
    ours.add_adapter("other", _config(surgery, row, second))
    _perturb(ours, "other", row, seed=1)
    _, make_inputs, call = MODELS[name]
    inputs = make_inputs()
    names = ["other", "__base__"]
    if not row.mixed_batch:
        with pytest.raises(SurgeryError, match="adapter_names"):
            _call_with(ours, call, inputs, names)
        return
    with torch.no_grad():
        mixed = _call_with(ours, call, inputs, names)
    ours.set_adapter("other")
    other_out = run(ours, name)
    assert max_diff(mixed[0], other_out[0]) <= 1e-5
    assert max_diff(mixed[1], base_out[1]) <= 1e-5


def _call_with(model, call, inputs, adapter_names):
    if isinstance(inputs, dict):
        return call(model, {**inputs, "adapter_names": adapter_names})
    out = model(inputs, adapter_names=adapter_names)
    return out
