"""QLoRA with dropout keeps what QLoRA keeps plus the mask's bits (the fused 4-bit node draws nn.Dropout's mask
itself, dropout.py); PEFT keeps the dropped input and dropout's noise for every adapted layer. Exact bytes, as
tests/methods/lora/test_dora_saved_memory.py counts them; the losses of the two runs are PEFT's (1e-5)."""
from __future__ import annotations

import warnings

import peft
import pytest
import torch

import surgery
import surgery.methods.lora.dropout as dropout_module
from surgery.methods.lora.quantized import Linear4bit
from tests.support.quantized_models import quantized
from tests.support.saved_memory import saved_bytes

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _model(lib, dropout: float):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = quantized("nf4")
        torch.manual_seed(0)
        config = lib.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=dropout,
                                init_lora_weights=False)
        return lib.get_peft_model(base, config).train()


@pytest.mark.parametrize("replay", [False, True], ids=["bits", "replay"])
def test_qlora_dropout_keeps_only_the_mask_bits(replay, monkeypatch):
    monkeypatch.setitem(dropout_module.REPLAY, "cpu", replay)
    inputs = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0))
    tokens = inputs.numel()
    plain, dropped = _model(surgery, 0.0), _model(surgery, 0.1)
    layers = [m for m in dropped.modules() if isinstance(m, Linear4bit)]
    assert len(layers) == 2 * len(TARGETS)
    bits = sum(-(-tokens * m.in_features // 8) for m in layers)
    assert saved_bytes(dropped, inputs) == saved_bytes(plain, inputs) + (0 if replay else bits)
    theirs = _model(peft, 0.1)
    assert saved_bytes(theirs, inputs) > saved_bytes(plain, inputs) + sum(tokens * m.in_features * 4 for m in layers)
    torch.manual_seed(5)
    ours_loss = dropped(input_ids=inputs, labels=inputs).loss
    torch.manual_seed(5)
    theirs_loss = theirs(input_ids=inputs, labels=inputs).loss
    assert abs(ours_loss.item() - theirs_loss.item()) < 1e-5
