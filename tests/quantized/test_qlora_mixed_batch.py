"""Mixed batches (`adapter_names=`) over bitsandbytes 4-bit and 8-bit bases, as PEFT's lora/bnb.py serves them.

Two adapters of different ranks and the base ("__base__") in one batch: each row equals the same row run alone
on its adapter, and the batch equals PEFT's mixed batch on an equal quantized base (same bitsandbytes kernels:
1e-5). Runs with the quantized layers in training mode (exact dequantized weights; see exact_logits).
"""
from __future__ import annotations

import warnings

import peft
import pytest
import torch

import surgery
from surgery.quantized import backend_of
from tests.support import tiny_models as tm
from tests.support.quantized_models import quantized, twins

NAMES = ["default", "other", "__base__", "other", "default"]


def _exact(model):
    model.eval()
    for module in model.modules():
        if backend_of(module) is not None:
            module.train()
    return model


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_mixed_batch_on_a_quantized_base_equals_rows_alone_and_peft(kind):
    kwargs = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, theirs = twins((quantized(kind), quantized(kind)), "LoraConfig", **kwargs)
        torch.manual_seed(1)
        theirs.add_adapter("other", peft.LoraConfig(**{**kwargs, "r": 8}))
        ours.add_adapter("other", surgery.LoraConfig(**{**kwargs, "r": 8}))
    surgery.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs, adapter_name="other"),
                                      adapter_name="other")
    ids = tm.token_batch(batch=1).repeat(len(NAMES), 1)   # equal rows: they differ by adapter only
    _exact(ours), _exact(theirs)
    with torch.no_grad():
        mixed = ours(input_ids=ids, adapter_names=NAMES).logits
        want = theirs(input_ids=ids, adapter_names=NAMES).logits
        torch.testing.assert_close(mixed, want, atol=1e-5, rtol=0)
        for i, name in enumerate(NAMES):
            if name == "__base__":
                with ours.disable_adapter():
                    alone = ours(input_ids=ids[i:i + 1]).logits
            else:
                ours.set_adapter(name)
                alone = ours(input_ids=ids[i:i + 1]).logits
            torch.testing.assert_close(mixed[i:i + 1], alone, atol=1e-5, rtol=0)
        assert min((mixed[i] - mixed[j]).abs().max() for i, j in ((0, 1), (0, 2), (1, 2))) > 1e-3   # visibly
