"""VeRA over bitsandbytes 4-bit and 8-bit bases: PEFT's outputs, training and merges."""
from __future__ import annotations

import warnings

import pytest
import torch

from tests.support import tiny_models as tm
from tests.support.quantized_models import quantized, train_side_by_side, twins

KWARGS = dict(target_modules=["q_proj", "k_proj"], r=8, init_weights=False)


def _pair(kind):
    return twins((quantized(kind), quantized(kind)), "VeraConfig", **KWARGS)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_outputs_training_and_merge_equal_peft(kind):
    ours, theirs = _pair(kind)
    assert type(ours.base_model.model.model.layers[0].self_attn.q_proj).__name__ == "Linear"   # PEFT's class
    ids = tm.token_batch(batch=4)
    for ours_loss, their_loss in train_side_by_side((ours, theirs), ids):
        assert ours_loss == pytest.approx(their_loss, abs=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = ours.merge_and_unload().state_dict(), theirs.merge_and_unload().state_dict()
    assert a.keys() == b.keys()
    for key in a:   # requantized with the same settings: the same codes and scales
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
        else:
            assert (a[key].int() - b[key].int()).abs().max() <= (1 if kind == "int8" else 0), key
