"""BOFT and HRA adapters kept in half precision (autocast_adapter_dtype=False) solve in float32, as PEFT does:
torch has no float16/bfloat16 solve on CPU. Outputs are compared with PEFT's (same weights)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import surgery

peft = pytest.importorskip("peft")

CASES = [("BOFTConfig", dict(boft_block_size=2, init_weights=False)), ("HRAConfig", dict(r=2, init_weights=False))]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name, kwargs", CASES)
def test_half_precision_adapter_runs_and_equals_peft(name, kwargs, dtype):
    models = []
    for lib in (peft, surgery):
        torch.manual_seed(0)
        base = nn.Sequential(nn.Linear(8, 8)).to(dtype)
        models.append(lib.get_peft_model(base, getattr(lib, name)(target_modules=["0"], **kwargs),
                                         autocast_adapter_dtype=False))
    models[1].load_state_dict(models[0].state_dict())
    x = torch.randn(3, 8).to(dtype)
    theirs, ours = (m(x) for m in models)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, theirs, atol=2e-2, rtol=2e-2)   # a few half-precision ulps
