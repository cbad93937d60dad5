"""Unmerged no-grad LoRA inference adds s (x A^T) B^T into the base output in one addmm_ (inference.py).

Equal to PEFT's forward within float32 rounding (1e-5 on logits, one ulp per layer in the arithmetic); taken
only where it applies: gradients, DoRA, half precision (PEFT's three roundings are kept bit-equal), dropout in
training mode, hooks, several adapters and per-sample adapters all run the generic path.
"""
from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch

import surgery
import surgery.methods.lora.inference as inference
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff, peft_model, perturb_adapters

KWARGS = dict(target_modules="all-linear", r=4, lora_alpha=8, lora_dropout=0.1)


@pytest.fixture()
def twins():
    base = tm.tiny_llama()
    theirs = peft_model(base, **KWARGS)
    perturb_adapters(theirs)
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**KWARGS))
    ours.load_state_dict(theirs.state_dict())
    return ours.eval(), theirs.eval()


def _taken(model, **call):
    """(logits, how many layers took the accumulate path)."""
    taken = []
    original = inference.inference_forward

    def counted(layer, x):
        out = original(layer, x)
        taken.append(out is not None)
        return out
    with mock.patch("surgery.methods.lora.linear.inference_forward", counted), torch.no_grad():
        logits = model(input_ids=tm.token_batch(), **call).logits
    return logits, sum(taken)


def test_no_grad_inference_accumulates_and_equals_peft(twins):
    ours, theirs = twins
    logits, taken = _taken(ours)
    assert taken == 14                              # 7 linears a block, 2 blocks
    with torch.no_grad():
        want = theirs(input_ids=tm.token_batch()).logits
    assert max_diff(logits, want) < 1e-5
    with mock.patch("surgery.methods.lora.linear.inference_forward", lambda layer, x: None), torch.no_grad():
        generic = ours(input_ids=tm.token_batch()).logits
    assert max_diff(logits, generic) < 1e-5      # the generic path: PEFT's separate ops


@pytest.mark.parametrize("case", ["train_dropout", "dora", "hook", "two_active", "mixed_batch", "bf16"])
def test_the_generic_path_runs_where_the_accumulate_does_not_apply(case):
    kwargs = dict(KWARGS, use_dora=case == "dora")
    base = tm.tiny_llama()
    if case == "bf16":
        base = base.to(torch.bfloat16)
    ours = surgery.get_peft_model(base, surgery.LoraConfig(**kwargs), autocast_adapter_dtype=case != "bf16").eval()
    call = {}
    if case == "train_dropout":
        ours.train()
    if case == "hook":
        layer = ours.base_model.model.model.layers[0].self_attn.q_proj
        layer.lora_A["default"].register_forward_hook(lambda *args: None)
    if case in ("two_active", "mixed_batch"):
        ours.add_adapter("other", surgery.LoraConfig(**kwargs))
    if case == "two_active":
        ours.base_model.set_adapter(["default", "other"])
    if case == "mixed_batch":
        call = {"adapter_names": ["default", "other"]}
    _, taken = _taken(ours, **call)
    assert taken == (13 if case == "hook" else 0)
