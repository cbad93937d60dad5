"""A transformers ViT image classifier, for real: plan, train, save/load both ways with PEFT, merge.

LoRA r=8 on the attention's query and value projections, the classifier trained in full (modules_to_save),
as PEFT's image-classification guide does. transformers 5 names them q_proj / v_proj (4.x: query / value).
The shared checks (tests/models/parity.py) run through TestViT.
"""
import torch
import torch.nn.functional as F

from tests.models import parity
from tests.support import vision_models as vm


def _logits(model):
    with torch.no_grad():
        return model(pixel_values=vm.images()).logits


VIT = parity.Family(
    build=vm.tiny_vit,
    lora=dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
              modules_to_save=["classifier"]),
    output=_logits,
    loss=lambda m: F.cross_entropy(m(pixel_values=vm.images()).logits, vm.class_labels()),
    saved=("classifier",),
)


class TestViT(parity.FamilyChecks):
    family = VIT


def test_every_layer_gets_query_and_value():
    paths = parity.peft_wrapped(VIT.peft())[0]
    layers = vm.vit_config().num_hidden_layers
    assert paths == sorted(f"vit.layers.{i}.attention.{p}" for i in range(layers) for p in ("q_proj", "v_proj"))


def test_transformers_4_names_match_nothing_in_either_library():
    # transformers 5 renamed ViT's attention.attention.query/value to attention.q_proj/v_proj: both refuse
    _, ours = parity.both_refuse(VIT, target_modules=["query", "value"])
    assert "q_proj" in ours and "v_proj" in ours   # surgery names the modules that are there


def test_cli_plans_bundled_vit_base(tmp_path, monkeypatch):
    table = parity.check_cli_plan("vit-base-patch16-224", dict(VIT.lora), tmp_path, monkeypatch)
    assert "vit.layers.11.attention.v_proj" in table and "768x768" in table
