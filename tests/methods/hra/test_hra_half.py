"""HRA on a bfloat16 base (autocast_adapter_dtype=True, the default): hra_u in float32 with PEFT's values, the
reflections computed at float32 as PEFT does, outputs and merged weights bit-identical to PEFT's."""
from __future__ import annotations

import copy

import torch

from tests.methods.vera.pairs import pair
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff


def test_bf16_base_equals_peft_bit_for_bit():
    base = tm.tiny_llama().to(torch.bfloat16)
    ours, theirs = pair("HRAConfig", base, std=0.3, target_modules=["q_proj", "v_proj", "down_proj"], r=4)
    assert ours.base_model.model.model.layers[0].self_attn.q_proj.hra_u["default"].dtype == torch.float32
    ids = tm.token_batch()
    with torch.no_grad():
        got = ours(ids).logits
        assert got.dtype == torch.bfloat16 and torch.equal(got, theirs(ids).logits)
        assert max_diff(got, base(ids).logits) > 1e-2
    a = copy.deepcopy(ours).merge_and_unload().state_dict()
    b = copy.deepcopy(theirs).merge_and_unload().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
