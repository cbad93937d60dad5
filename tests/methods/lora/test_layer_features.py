"""Adapter layers expose PEFT's in_features / out_features (LoraLayer.__init__ reads them off the base layer:
Linear and Conv1D sizes, conv channels, an embedding's (num_embeddings, embedding_dim)), and delete_adapter
drops every per-adapter entry, use_dora included (PEFT lists it in other_param_names)."""
from __future__ import annotations

import copy
import warnings

import pytest
from torch import nn

import surgery
from tests.support import tiny_models as tm

peft = pytest.importorskip("peft")

CASES = {   # name -> (base builder, target_modules)
    "linear": (tm.tiny_llama, ["q_proj", "down_proj"]),
    "conv1d_gpt2": (tm.tiny_gpt2, ["c_attn", "c_fc"]),
    "conv": (tm.tiny_convnet, ["conv2d", "conv2d_strided", "conv1d", "conv3d", "head"]),
    "embedding": (tm.tiny_embed_mlp, ["emb", "lin0"]),
    "grouped": (lambda: nn.Sequential(nn.Conv2d(4, 8, 3, groups=4)), ["0"]),
}


def _features(model) -> dict:
    return {n: (m.in_features, m.out_features) for n, m in model.named_modules() if hasattr(m, "lora_A")}


@pytest.mark.parametrize("name", list(CASES))
def test_in_and_out_features_equal_peft(name):
    build, targets = CASES[name]
    base = build()
    config = dict(target_modules=targets, r=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**config))
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**config))
    want = _features(theirs)
    assert want and _features(ours) == want
    assert all(isinstance(v, int) for pair in want.values() for v in pair)


@pytest.mark.parametrize("name, targets", [("linear", ["q_proj"]), ("conv", ["conv2d"]), ("embedding", ["emb"])])
def test_delete_adapter_leaves_no_use_dora_entry(name, targets):
    base = CASES[name][0]()
    model = surgery.get_peft_model(base, surgery.LoraConfig(target_modules=targets, use_dora=True))
    model.add_adapter("plain", surgery.LoraConfig(target_modules=targets))
    model.add_adapter("dora", surgery.LoraConfig(target_modules=targets, use_dora=True))
    layers = [m for _, m in model.named_modules() if hasattr(m, "use_dora")]
    assert layers and all(layer.use_dora == {"default": True, "plain": False, "dora": True} for layer in layers)
    model.delete_adapter("plain")
    model.delete_adapter("dora")
    for layer in layers:
        assert layer.use_dora == {"default": True}
        assert set(layer.r) == set(layer.scaling) == set(layer.lora_alpha) == {"default"}
        assert set(layer.lora_magnitude_vector) == {"default"}
