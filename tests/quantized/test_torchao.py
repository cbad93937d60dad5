"""LoRA over torchao int8 weight-only bases (transformers' TorchAoConfig on the CPU): PEFT's outputs, training
and merges, plus the full-precision merge."""
from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, TorchAoConfig

import surgery
from surgery.errors import PlanError
from surgery.quantized import backend_of
from tests.support import quantized_models as qm
from tests.support import tiny_models as tm
from tests.support.quantized_models import train_side_by_side, twins

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _base():
    from torchao.quantization import Int8WeightOnlyConfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(qm._saved("llama", torch.float32, **qm.SIZES["llama"]),
                                                    quantization_config=TorchAoConfig(quant_type=Int8WeightOnlyConfig()),
                                                    device_map="cpu")


def _pair(**lora):
    kwargs = dict(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False, **lora)
    return twins((_base(), _base()), "LoraConfig", **kwargs)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_outputs_training_and_merge_equal_peft(use_dora):
    ours, theirs = _pair(use_dora=use_dora)
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    their_layer = theirs.base_model.model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == type(their_layer).__name__ == "TorchaoLoraLinear"
    assert backend_of(layer.get_base_layer()).name == "torchao"
    ids = tm.token_batch(batch=4)
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=0)
    for ours_loss, their_loss in train_side_by_side((ours, theirs), ids):
        assert ours_loss == pytest.approx(their_loss, abs=1e-5)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        adapted = ours(input_ids=ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = ours.merge_and_unload(), theirs.merge_and_unload()
    with torch.no_grad():
        ours_merged, their_merged = a(input_ids=ids).logits, b(input_ids=ids).logits
    if not use_dora:
        for x, y in zip(a.modules(), b.modules()):
            if backend_of(x) is not None:   # requantized with the same config: the same int8 codes and scales
                torch.testing.assert_close(x.weight.dequantize(), y.weight.dequantize(), atol=1e-6, rtol=0)
        torch.testing.assert_close(ours_merged, their_merged, atol=1e-5, rtol=0)
    else:   # PEFT 0.21.2's torchao merge adds the plain LoRA delta and drops DoRA's magnitude: surgery merges DoRA
        ours_off, their_off = (ours_merged - adapted).abs().max(), (their_merged - adapted).abs().max()
        assert ours_off < 0.05 and their_off > 4 * ours_off, (ours_off, their_off)


def test_dequantized_merge_equals_the_adapted_model():
    ours, _ = _pair()
    ids = tm.token_batch()
    with torch.no_grad():
        expected = ours(input_ids=ids).logits   # torchao's int8 weight-only CPU path computes with W = q * scale
        merged = ours.merge_and_unload(dequantize=True)
        assert not any(backend_of(m) for m in merged.modules())
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-4, rtol=0)


def test_lora_bias_is_refused_as_in_peft():
    with pytest.raises(PlanError, match="lora_bias=True .* torchao"):
        surgery.get_peft_model(_base(), surgery.LoraConfig(target_modules=["q_proj"], lora_bias=True))
