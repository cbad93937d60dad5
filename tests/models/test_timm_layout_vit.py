"""timm's VisionTransformer layout (tests/support/vision_models.TimmLayoutViT stands in for timm, which cannot be
installed here), for real: plan, train, save/load both ways with PEFT, merge.

LoRA on the fused `qkv` Linear (dim -> 3*dim, one layer for q, k and v), `proj`, `fc1`, `fc2`; the `head`
trained in full. The model is a plain nn.Module, so task_type is None (PeftModel), as for any timm model.
The suffix `proj` also matches patch_embed.proj, a Conv2d: PEFT adapts it too, and so must surgery.
The shared checks (tests/models/parity.py) run through TestTimmLayoutViT.
"""
import pytest
import torch
import torch.nn.functional as F

import surgery
from tests.models import parity
from tests.support import vision_models as vm

BLOCKS_ONLY = r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])"   # a regex: the blocks' layers, not patch_embed


def _logits(model):
    with torch.no_grad():
        return model(vm.images())


TIMM = parity.Family(
    build=vm.tiny_timm_vit,
    lora=dict(r=8, lora_alpha=16, target_modules=["qkv", "proj", "fc1", "fc2"], lora_dropout=0.0,
              modules_to_save=["head"]),
    output=_logits,
    loss=lambda m: F.cross_entropy(m(vm.images()), vm.class_labels()),
    saved=("head",),
)


class TestTimmLayoutViT(parity.FamilyChecks):
    family = TIMM


@pytest.mark.parametrize("targets", [TIMM.lora["target_modules"], BLOCKS_ONLY])
def test_targets_are_the_blocks_layers_and_for_the_list_patch_embed(targets):
    family = parity.Family(TIMM.build, {**TIMM.lora, "target_modules": targets}, TIMM.output, TIMM.loss,
                           TIMM.saved)
    parity.check_plan(family)
    depth = len(vm.tiny_timm_vit().blocks)
    per_block = [f"blocks.{i}.{s}" for i in range(depth) for s in ("attn.proj", "attn.qkv", "mlp.fc1", "mlp.fc2")]
    extra = ["patch_embed.proj"] if isinstance(targets, list) else []
    assert parity.peft_wrapped(family.peft())[0] == sorted(per_block + extra)


def test_fused_qkv_is_one_lora_layer_over_all_three_projections():
    model = TIMM.surgery()
    qkv = model.base_model.model.blocks[0].attn.qkv
    dim = vm.tiny_timm_vit().head.in_features
    assert qkv.lora_A["default"].weight.shape == (8, dim) and qkv.lora_B["default"].weight.shape == (3 * dim, 8)
    assert type(model.base_model.model.patch_embed.proj.base_layer) is torch.nn.Conv2d


def test_plan_works_on_the_meta_device():
    with torch.device("meta"):
        meta = vm.TimmLayoutViT()
    assert sorted(surgery.plan(meta, surgery.LoraConfig(**TIMM.lora)).paths()) == parity.peft_wrapped(TIMM.peft())[0]
