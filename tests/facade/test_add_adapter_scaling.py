"""add_adapter's work does not grow with the adapters already on the model (PEFT's does, peft#981), and 100
adapters add, activate and delete as in PEFT.

The work is counted, not timed: every Python function call and builtin call the interpreter reports while
add_adapter runs (sys.setprofile), which counts each step of a walk over modules or parameters (generator
resumptions, requires_grad_, numel, ModuleDict lookups). The 3rd and the 40th adapter must cost the same count
(the 1st and 2nd differ: containers are counted for the first time).
"""
from __future__ import annotations

import gc
import sys
from unittest import mock

import peft
import pytest
import torch

import surgery
import surgery.rewrite.added as added
from tests.support import tiny_models as tm

CONFIGS = {"q,v": dict(r=2, target_modules=["q_proj", "v_proj"]), "all-linear": dict(r=2, target_modules="all-linear")}


def calls_made(fn) -> int:
    """Calls made by fn; garbage from earlier code is collected first and the collector stays off meanwhile
    (objects it would free could run weakref callbacks, calls that are not fn's work)."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event in ("call", "c_call"):
            count += 1
    gc.collect()
    gc.disable()
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
        gc.enable()
    return count


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_the_work_of_add_adapter_does_not_grow_with_the_adapters(case):
    kwargs = CONFIGS[case]
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(**kwargs))
    counts = []
    for i in range(40):
        config = surgery.LoraConfig(**kwargs)
        counts.append(calls_made(lambda: model.add_adapter(f"a{i}", config)))
    # no growth: the 39th add makes the 2nd's calls, give or take a few the interpreter's caches make now and then
    # (seen: +4 of 8,027 in a full run); one call more per existing adapter per module would add thousands
    assert counts[2] > 1000 and abs(counts[39] - counts[2]) <= 0.002 * counts[2], counts[:3] + counts[-3:]
    assert max(counts[2:]) - min(counts[2:]) <= 0.002 * counts[2], counts
    assert len(model.peft_config) == 41


def test_a_plain_add_does_not_set_every_flag_again():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(r=2, target_modules=["q_proj"]))
    with mock.patch.object(added, "mark_trainable", wraps=added.mark_trainable) as full:
        model.add_adapter("a0", surgery.LoraConfig(r=2, target_modules=["q_proj"]))
        assert full.call_count == 0
        model.set_requires_grad("a0", True)   # flags changed outside mark_trainable: the next add sets them all
        model.add_adapter("a1", surgery.LoraConfig(r=2, target_modules=["q_proj"]))
        assert full.call_count == 1


def adapter_keys(model, names) -> set[str]:
    return {k for k in model.state_dict() if any(f".{n}." in k for n in names)}


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_a_hundred_adapters_as_peft():
    kwargs = dict(r=2, target_modules=["q_proj", "v_proj"])
    ours = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(**kwargs))
    theirs = peft.get_peft_model(tm.tiny_llama(), peft.LoraConfig(**kwargs))
    for i in range(100):
        ours.add_adapter(f"a{i}", surgery.LoraConfig(**kwargs))
        theirs.add_adapter(f"a{i}", peft.LoraConfig(**kwargs))
    assert list(ours.peft_config) == list(theirs.peft_config) == ["default"] + [f"a{i}" for i in range(100)]
    assert ours.active_adapter == theirs.active_adapter == "default"
    picked = ["default", "a0", "a57", "a99"]
    assert adapter_keys(ours, picked) == adapter_keys(theirs, picked) and len(adapter_keys(ours, ["a57"])) == 8
    assert trainable(ours) == trainable(theirs) and all(".default." in n for n in trainable(ours))
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()

    for model in (ours, theirs):
        model.set_adapter("a57")
    assert ours.active_adapter == theirs.active_adapter == "a57"
    assert trainable(ours) == trainable(theirs) and all(".a57." in n for n in trainable(ours))

    for model in (ours, theirs):
        model.delete_adapter("a3")
    assert list(ours.peft_config) == list(theirs.peft_config) and "a3" not in ours.peft_config
    assert ours.active_adapters == theirs.active_adapters == ["a57"] and trainable(ours) == trainable(theirs)
    for model in (ours, theirs):
        model.delete_adapter("a57")   # the active one
    assert list(ours.peft_config) == list(theirs.peft_config) and "a57" not in ours.peft_config
    assert adapter_keys(ours, ["a3", "a57"]) == set() == adapter_keys(theirs, ["a3", "a57"])
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    # which adapter becomes active differs: PEFT takes the first name in sorted order ("a0"), surgery the first
    # added ("default"); either way exactly one remaining adapter is active and it is the one that trains
    assert len(ours.active_adapters) == 1 and ours.active_adapter in ours.peft_config
    assert trainable(ours) and all(f".{ours.active_adapter}." in n for n in trainable(ours))


def test_inactive_adapters_leave_the_forward_unchanged():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:   # the active adapter's factors: a visible update
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    ids = tm.token_batch()
    with torch.no_grad():
        before = model(input_ids=ids).logits
        for i in range(30):
            model.add_adapter(f"a{i}", surgery.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
        for name, p in model.named_parameters():
            if ".a" in name and "lora_" in name:   # the inactive ones: nonzero too, so leaking would show
                p.copy_(torch.randn(p.shape, generator=generator))
        after = model(input_ids=ids).logits
    assert torch.equal(before, after) and ".default." in next(n for n, _ in model.named_parameters() if "lora_" in n)
