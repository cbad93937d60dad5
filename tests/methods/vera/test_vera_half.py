"""VeRA on a bfloat16 base (autocast_adapter_dtype=True, the default): the projections and lambdas end where
PEFT's do (float32 values rounded through bfloat16), and outputs and merged weights are bit-identical to PEFT's."""
from __future__ import annotations

import copy

import torch

import surgery
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff

from .pairs import pair

LLAMA = dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4)


def test_bf16_base_equals_peft_bit_for_bit():
    base = tm.tiny_llama().to(torch.bfloat16)
    fresh = surgery.get_peft_model(copy.deepcopy(base), surgery.VeraConfig(**LLAMA))
    lambda_d = fresh.base_model.model.model.layers[0].self_attn.q_proj.vera_lambda_d["default"]
    assert lambda_d.dtype == torch.float32 and lambda_d[0].item() == torch.tensor(0.1).bfloat16().item()
    ours, theirs = pair("VeraConfig", base, std=0.3, **LLAMA)
    for key in ("vera_A", "vera_B"):
        mine, want = getattr(ours.base_model, key)["default"], getattr(theirs.base_model, key)["default"]
        assert mine.dtype == want.dtype == torch.float32 and torch.equal(mine, want)
    ids = tm.token_batch()
    with torch.no_grad():
        got = ours(ids).logits
        assert got.dtype == torch.bfloat16 and torch.equal(got, theirs(ids).logits)
        assert max_diff(got, base(ids).logits) > 1e-2
    a = copy.deepcopy(ours).merge_and_unload().state_dict()
    b = copy.deepcopy(theirs).merge_and_unload().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
