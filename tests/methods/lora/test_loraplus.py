"""create_loraplus_optimizer puts every trainable parameter in PEFT's group with PEFT's lr and weight decay."""
import peft
import pytest
import torch
from peft.optimizers import create_loraplus_optimizer as peft_loraplus

import surgery
from surgery.optimizers import create_loraplus_optimizer
from tests.support import tiny_models

CASES = {
    "llama-dora-embedding": (tiny_models.tiny_llama, dict(r=4, target_modules=["q_proj", "v_proj", "embed_tokens"],
                                                          use_dora=True)),
    "bert-bias-layernorm": (tiny_models.tiny_bert_seq_cls, dict(r=4, target_modules=["query", "value"],
                                                                bias="lora_only", task_type="SEQ_CLS",
                                                                modules_to_save=["LayerNorm"])),
}


def _groups(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return [(sorted(names[id(p)] for p in g["params"]), g["lr"], g["weight_decay"]) for g in optimizer.param_groups]


@pytest.mark.parametrize("case", sorted(CASES))
def test_groups_equal_peft(case):
    build, kwargs = CASES[case]
    ours = surgery.get_peft_model(build(), surgery.LoraConfig(**kwargs))
    theirs = peft.get_peft_model(build(), peft.LoraConfig(**kwargs))
    extra = dict(loraplus_lr_embedding=1e-5, loraplus_weight_decay=0.01, betas=(0.8, 0.9))
    ours_opt = create_loraplus_optimizer(ours, torch.optim.AdamW, lr=2e-4, loraplus_lr_ratio=16, **dict(extra))
    theirs_opt = peft_loraplus(theirs, torch.optim.AdamW, lr=2e-4, loraplus_lr_ratio=16, **dict(extra))
    assert _groups(ours, ours_opt) == _groups(theirs, theirs_opt)
    assert ours_opt.defaults["betas"] == (0.8, 0.9)
    groups = _groups(ours, ours_opt)
    assert all("lora_B" in n or "magnitude" in n or "bias" in n or "LayerNorm" in n for n in groups[2][0] + groups[3][0])
    assert sum(len(g[0]) for g in groups) == sum(p.requires_grad for p in ours.parameters())


def test_negative_rates_are_refused():
    model = surgery.get_peft_model(tiny_models.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="loraplus_lr_ratio = -1 cannot be negative"):
        create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-4, loraplus_lr_ratio=-1)
