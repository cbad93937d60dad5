"""OFT configs and plans: every impossible value refused naming the field, PEFT's block-layout rule checked per
module at plan time (valid sizes named), unsupported layers refused, plan notes, and trainable-parameter
figures equal to PEFT's."""
from __future__ import annotations

import warnings

import re

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import surgery
from surgery.errors import ConfigError, PlanError
from tests.support import tiny_models as tm
from tests.support.helpers import printed_line

from .pairs import OneLayer

pytest.importorskip("peft")


@pytest.mark.parametrize("kwargs, field", [
    (dict(r=0, oft_block_size=0), "r = 0 and oft_block_size = 0"),
    (dict(r=4, oft_block_size=8), "both set"),
    (dict(r=-1, oft_block_size=0), "OFTConfig.r = -1"),
    (dict(oft_block_size=-4), "OFTConfig.oft_block_size = -4"),
    (dict(module_dropout=1.5), "OFTConfig.module_dropout = 1.5"),
    (dict(module_dropout=-0.1), "OFTConfig.module_dropout = -0.1"),
    (dict(eps=0.0), "OFTConfig.eps = 0.0"),
    (dict(eps=float("nan")), "OFTConfig.eps = nan"),
    (dict(num_cayley_neumann_terms=0), "OFTConfig.num_cayley_neumann_terms = 0"),
    (dict(bias="lora_only"), "OFTConfig.bias = 'lora_only'"),
    (dict(r=2.5, oft_block_size=0), "OFTConfig.r = 2.5"),
    (dict(coft="yes"), "OFTConfig.coft = 'yes'"),
    (dict(init_weights="gaussian"), "OFTConfig.init_weights = 'gaussian'"),
    (dict(layers_pattern="layers"), "layers_pattern"),
])
def test_invalid_values_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        surgery.OFTConfig(**kwargs)
    assert field in str(err.value)


def test_peft_refuses_the_same_layout_combinations():
    import peft

    for kwargs in (dict(r=0, oft_block_size=0), dict(r=4, oft_block_size=8)):
        with pytest.raises(ValueError):
            peft.OFTConfig(**kwargs)


def test_a_saved_config_of_the_old_oft_is_refused():
    with pytest.raises(ConfigError, match="PEFT < 0.14"):
        surgery.OFTConfig.from_dict({"peft_type": "OFT", "r": 8})
    assert surgery.OFTConfig.from_dict({"peft_type": "OFT", "r": 8, "oft_block_size": 0}).r == 8


def test_a_neumann_adapter_older_than_0_18_is_warned_about(caplog):
    surgery.OFTConfig.from_dict({"peft_type": "OFT", "oft_block_size": 8, "peft_version": "0.17.1"})
    assert "changed in PEFT 0.18.0" in caplog.text


@pytest.mark.parametrize("kwargs, dim, valid, adjusted, layout", [
    (dict(oft_block_size=5), 32, "1, 2, 4, 8, 16, 32", "`oft_block_size` to (4)", (8, 4)),
    (dict(oft_block_size=64), 32, "1, 2, 4, 8, 16, 32", "`oft_block_size` to (32)", (1, 32)),
    (dict(r=3, oft_block_size=0), 32, "1, 2, 4, 8, 16, 32", "`r` to (2)", (2, 16)),
])
def test_a_block_size_that_does_not_divide_in_features_is_adjusted_as_peft_with_a_plan_warning(
        kwargs, dim, valid, adjusted, layout):
    import peft

    plan = surgery.plan(tm.tiny_llama(), surgery.OFTConfig(target_modules=["q_proj"], **kwargs))
    text = "\n".join(plan.warnings)
    assert "model.layers.0.self_attn.q_proj" in text and f"in_features={dim}" in text
    assert f"valid values for this module: {valid}" in text and adjusted in text
    assert {(r.params["r"], r.params["oft_block_size"]) for r in plan.rewrites} == {layout}
    with pytest.warns(UserWarning, match="Adjusted"):   # the oracle makes the same choice
        theirs = peft.get_peft_model(tm.tiny_llama(), peft.OFTConfig(target_modules=["q_proj"], **kwargs))
    layer = theirs.base_model.model.model.layers[0].self_attn.q_proj
    assert (layer.r["default"], layer.oft_block_size["default"]) == layout


def test_the_adjustment_named_is_what_peft_does():
    import peft

    from surgery.methods.oft.layout import peft_adjusted
    layer = peft.tuners.oft.layer.OFTLayer.adjust_oft_parameters
    for dim in (12, 27, 32, 72, 100):
        for value in range(1, dim + 3):
            if dim % value:
                assert peft_adjusted(dim, value) == layer(None, dim, value), (dim, value)


def test_conv_patch_dimension_is_checked_and_refusals_for_unsupported_convs():
    conv = OneLayer(nn.Conv2d(3, 4, 3))
    adjusted = surgery.plan(conv, surgery.OFTConfig(target_modules=["layer"], oft_block_size=4))
    assert re.search(r"in_channels x kernel height x kernel width=27 .*1, 3, 9, 27", "\n".join(adjusted.warnings))
    fitting = surgery.plan(conv, surgery.OFTConfig(target_modules=["layer"], oft_block_size=9))
    assert fitting.rewrites[0].params["r"] == 3
    for module, message in ((nn.Conv2d(4, 4, 3, groups=2), "groups=2"), (nn.Conv2d(4, 4, 3, dilation=2), "dilation"),
                            (nn.Conv2d(4, 4, (3, 1)), "non-square kernel")):
        with pytest.raises(PlanError, match=message):
            surgery.plan(OneLayer(module), surgery.OFTConfig(target_modules=["layer"], oft_block_size=4))


@pytest.mark.parametrize("module", [Conv1D(8, 8), nn.Conv1d(8, 8, 1), nn.Conv3d(8, 8, 1), nn.LayerNorm(8)])
def test_layers_peft_does_not_wrap_are_refused(module):
    with pytest.raises(PlanError, match="torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding"):
        surgery.plan(OneLayer(module), surgery.OFTConfig(target_modules=["layer"], oft_block_size=4))


def test_gpt2_conv1d_targets_are_refused_as_peft_does():
    import peft

    with pytest.raises(PlanError, match="Conv1D"):
        surgery.get_peft_model(tm.tiny_gpt2(), surgery.OFTConfig(oft_block_size=8))   # default target: c_attn
    with pytest.raises(TypeError, match="Conv1D"):
        peft.get_peft_model(tm.tiny_gpt2(), peft.OFTConfig(oft_block_size=8))


def test_plan_notes_say_what_peft_does_silently():
    notes = surgery.plan(tm.tiny_llama(), surgery.OFTConfig(target_modules=["q_proj"], oft_block_size=8,
                                                            fan_in_fan_out=True, module_dropout=0.2)).warnings
    assert any("fan_in_fan_out" in n for n in notes) and any("module_dropout=0.2 has no effect" in n for n in notes)
    conv_config = surgery.OFTConfig(target_modules=["conv2d"], oft_block_size=9)
    conv_notes = surgery.plan(tm.tiny_convnet(), conv_config).warnings
    assert any("not the identity at init" in n for n in conv_notes)


def test_default_targets_and_columns():
    p = surgery.plan(tm.tiny_llama(), surgery.OFTConfig(oft_block_size=8, coft=True))
    assert sorted({rw.path.rsplit(".", 1)[1] for rw in p.rewrites}) == ["q_proj", "v_proj"]
    assert p.rewrites[0].params == {"r": 4, "oft_block_size": 8, "coft": True, "block_share": False}
    table = p.table()
    assert "block" in table and "COFT" in table


@pytest.mark.parametrize("name, kwargs", [
    ("llama", dict(target_modules="all-linear", oft_block_size=8)),
    ("llama", dict(target_modules=["q_proj", "down_proj", "embed_tokens"], r=4, oft_block_size=0, block_share=True)),
    ("llama_bias", dict(target_modules=["q_proj", "up_proj"], oft_block_size=16, bias="oft_only")),
    ("bert_cls", dict(task_type="SEQ_CLS", target_modules=["query", "value"], oft_block_size=8)),
    ("llama_bias", dict(target_modules=["k_proj", "o_proj"], r=2, oft_block_size=0, bias="all")),
    ("conv", dict(target_modules=["conv2d", "conv2d_strided"], oft_block_size=9)),
    ("embedding", dict(target_modules=["emb", "lin0"], oft_block_size=2, modules_to_save=["lin1"])),
])
def test_trainable_line_and_plan_totals_equal_peft(name, kwargs):
    import peft

    from tests.support.helpers import MODELS
    builder = MODELS[name][0]
    ours = surgery.get_peft_model(builder(), surgery.OFTConfig(**kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(builder(), peft.OFTConfig(**kwargs))
    assert printed_line(ours) == printed_line(theirs)
    assert surgery.plan(builder(), surgery.OFTConfig(**kwargs)).totals_line() == printed_line(theirs)
    assert set(surgery.get_peft_model_state_dict(ours)) == set(peft.get_peft_model_state_dict(theirs))


def test_checkpoint_keys_are_peft_names():
    model = surgery.get_peft_model(tm.tiny_embed_mlp(), surgery.OFTConfig(target_modules=["emb", "lin0"],
                                                                         oft_block_size=4))
    keys = surgery.get_peft_model_state_dict(model)
    assert set(keys) == {"base_model.model.emb.oft_embedding_R.weight", "base_model.model.lin0.oft_R.weight"}
    assert keys["base_model.model.lin0.oft_R.weight"].shape == (4, 6)
    assert torch.equal(keys["base_model.model.emb.oft_embedding_R.weight"], torch.zeros(4, 6))


def test_a_block_size_peft_adjusted_loads_as_saved(tmp_path):
    """PEFT moves oft_block_size=5 on in_features=32 to 4 and saves blocks of 4 under a config saying 5: surgery
    does the same for a new adapter, and loads such a checkpoint with the saved blocks."""
    adjusted = surgery.get_peft_model(tm.tiny_llama(), surgery.OFTConfig(target_modules=["q_proj"], oft_block_size=5))
    assert {r.params["oft_block_size"] for r in adjusted.plan().rewrites} == {4}
    saved = surgery.get_peft_model(tm.tiny_llama(), surgery.OFTConfig(target_modules=["q_proj"], oft_block_size=4))
    saved.save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(path.read_text().replace('"oft_block_size": 4', '"oft_block_size": 5'))
    loaded = surgery.PeftModel.from_pretrained(tm.tiny_llama(), str(tmp_path))
    assert {r.params["oft_block_size"] for r in loaded.plan().rewrites} == {4}
    assert any("holds blocks of 4" in w for w in loaded.plan().warnings)
    ids = tm.token_batch()
    assert torch.equal(loaded(input_ids=ids).logits, saved.eval()(input_ids=ids).logits)
