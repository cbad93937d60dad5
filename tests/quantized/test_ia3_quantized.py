"""(IA)^3 over bitsandbytes 4-bit and 8-bit bases: PEFT's outputs and training, plus merges PEFT refuses."""
from __future__ import annotations


import pytest
import torch

import surgery
from tests.support import tiny_models as tm
from tests.support.quantized_models import exact_logits, quantized, train_side_by_side, twins

KINDS = ["nf4", "int8"]
FEEDFORWARD = {"output": [], "input": ["down_proj"]}


def _pair(kind, scales):
    kwargs = dict(target_modules=["q_proj", "v_proj", "down_proj"], feedforward_modules=FEEDFORWARD[scales],
                  init_ia3_weights=False)
    return twins((quantized(kind), quantized(kind)), "IA3Config", **kwargs)


@pytest.mark.parametrize("scales", list(FEEDFORWARD))
@pytest.mark.parametrize("kind", KINDS)
def test_outputs_and_three_training_steps_equal_peft(kind, scales):
    ours, theirs = _pair(kind, scales)
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == {"nf4": "Linear4bit", "int8": "Linear8bitLt"}[kind]
    assert layer.ia3_l["default"].dtype == torch.float32
    ids = tm.token_batch(batch=4)
    for ours_loss, their_loss in train_side_by_side((ours, theirs), ids):
        assert ours_loss == pytest.approx(their_loss, abs=1e-5)
    for model in (ours, theirs):   # after training: an eval pass repacks the 4-bit weights (test_qlora_parity)
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scales", list(FEEDFORWARD))
@pytest.mark.parametrize("kind", KINDS)
def test_merges_peft_refuses(kind, scales):
    ours, theirs = _pair(kind, scales)
    with pytest.raises(ValueError, match="Cannot merge ia3 layers"):
        theirs.merge_and_unload()
    ids = tm.token_batch()
    expected = exact_logits(ours, ids)
    full = _pair(kind, scales)[0].merge_and_unload(dequantize=True)
    with torch.no_grad():
        torch.testing.assert_close(full(input_ids=ids).logits, expected, atol=1e-4, rtol=0)
    with pytest.warns(surgery.PeftWarning, match="quantized base layer"):
        ours.merge_adapter()
    merged = exact_logits(ours, ids)
    assert (merged - expected).abs().max() < 0.2 and not torch.equal(merged, expected)   # requantized: rounded
    ours.unmerge_adapter()
    assert not any(getattr(m, "merged_adapters", None) for m in ours.modules())
