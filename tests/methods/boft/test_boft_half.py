"""A bfloat16 base: adapters stay float32 (autocast, as peft), outputs keep the base dtype and stay within bf16
rounding of peft's; merged weights equal peft's."""
from __future__ import annotations

import copy

import pytest
import torch

import surgery
from tests.support.helpers import MODELS, max_diff, run

from .pairs import peft_boft, perturb_boft

pytest.importorskip("peft")


@pytest.mark.parametrize("name, kwargs", [
    ("llama_bias", dict(target_modules=["q_proj", "up_proj"], boft_block_size=4)),
    ("conv", dict(target_modules=["conv2d", "conv2d_strided"], boft_block_size=9)),
])
def test_bf16_base_equals_peft(name, kwargs):
    import peft

    def build():
        return MODELS[name][0]().to(torch.bfloat16)

    ours = surgery.get_peft_model(build(), surgery.BOFTConfig(**kwargs))
    perturb_boft(ours)
    theirs = peft_boft(build(), **kwargs)
    peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours))
    assert {p.dtype for n, p in ours.named_parameters() if ".boft_" in n} == {torch.float32}
    inputs = MODELS[name][1]()
    inputs = inputs.to(torch.bfloat16) if isinstance(inputs, torch.Tensor) else inputs
    got, want = run(ours.eval(), name, inputs), run(theirs.eval(), name, inputs)
    assert got.dtype == torch.bfloat16
    assert max_diff(got, want) <= 2e-3 and max_diff(want, run(build(), name, inputs)) > 4e-3
    mine = copy.deepcopy(ours).merge_and_unload().state_dict()
    theirs_merged = copy.deepcopy(theirs).merge_and_unload().state_dict()
    assert all(mine[k].dtype == torch.bfloat16 and max_diff(mine[k], v) <= 4e-3 for k, v in theirs_merged.items())
