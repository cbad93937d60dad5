"""BOFTConfig validation (each bad value named with what would be valid) and the plan-time refusals of layouts
or layers BOFT cannot take (the module, the value and the valid values named)."""
from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn

import surgery
from surgery.errors import ConfigError, PlanError
from tests.support import tiny_models as tm

# (kwargs, what the message must say)
BAD_CONFIGS = [
    (dict(boft_block_size=-4), r"boft_block_size = -4 is out of range; it must be >= 0"),
    (dict(boft_block_size=0, boft_block_num=-2), r"boft_block_num = -2 is out of range; it must be >= 0"),
    (dict(boft_block_size=0), r"boft_block_size = 0 and BOFTConfig.boft_block_num = 0: give one"),
    (dict(boft_block_size=4, boft_block_num=8), r"boft_block_size = 4 and BOFTConfig.boft_block_num = 8: give only"),
    (dict(boft_n_butterfly_factor=0), r"boft_n_butterfly_factor = 0 is out of range; it must be >= 1"),
    (dict(boft_dropout=1.5), r"boft_dropout = 1.5 is out of range; it must be >= 0.0 and <= 1.0"),
    (dict(boft_dropout=float("nan")), r"boft_dropout = nan is out of range"),
    (dict(boft_block_size=3, boft_n_butterfly_factor=2), r"boft_block_size = 3 must be even"),
    (dict(boft_block_size=0, boft_block_num=6, boft_n_butterfly_factor=3),
     r"boft_block_num = 6 must be a multiple of 2\*\*\(boft_n_butterfly_factor-1\) = 4"),
    (dict(bias="lora_only"), r"bias = 'lora_only' has type str; expected one of 'none', 'all', 'boft_only'"),
    (dict(init_weights="gaussian"), r"init_weights = 'gaussian' has type str; expected bool"),
    (dict(boft_block_size=4.0), r"boft_block_size = 4.0 has type float; expected int"),
    (dict(layers_pattern="layers"), r"layers_pattern. is specified, .layers_to_transform. must also be specified. \(BOFTConfig.layers_pattern = 'layers'"),
]


@pytest.mark.parametrize("kwargs, message", BAD_CONFIGS, ids=[m[:30] for _, m in BAD_CONFIGS])
def test_bad_values_are_refused_by_name(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        surgery.BOFTConfig(target_modules=["q_proj"], **kwargs)


def test_peft_refuses_the_same_block_settings():
    import peft

    for kwargs in (dict(boft_block_size=0), dict(boft_block_size=4, boft_block_num=8)):
        with pytest.raises(ValueError):
            peft.BOFTConfig(target_modules=["q_proj"], **kwargs)


def _plan(model, **kwargs):
    return surgery.plan(model, surgery.BOFTConfig(**kwargs))


# (model builder, kwargs, message, peft refuses it too on its CPU path)
REFUSED = [
    (tm.tiny_llama, dict(target_modules=["down_proj"], boft_block_size=5),
     r"'model.layers.0.mlp.down_proj' \(Linear\): boft_block_size = 5 cannot tile in_features = 64.*"
     r"valid boft_block_size values here: 1, 2, 4, 8, 16, 32, 64", True),
    (tm.tiny_llama, dict(target_modules=["q_proj"], boft_block_size=0, boft_block_num=3),
     r"boft_block_num = 3 cannot tile in_features = 32.*valid boft_block_num values here: 1, 2, 4, 8, 16, 32", True),
    (tm.tiny_llama, dict(target_modules=["q_proj"], boft_block_size=16, boft_n_butterfly_factor=3),
     r"boft_block_size = 16 cannot tile in_features = 32 with boft_n_butterfly_factor = 3.*"
     r"valid boft_block_size values here: 2, 4, 8", False),
    (tm.tiny_convnet, dict(target_modules=["conv2d"], boft_block_size=4),
     r"'conv2d' \(Conv2d\): boft_block_size = 4 cannot tile in_channels \* k \* k = 3 \* 3 \* 3 = 27.*"
     r"values here: 1, 3, 9, 27", True),
    (tm.tiny_gpt2, dict(target_modules=["c_attn"]),
     r"'transformer.h.0.attn.c_attn' is a Conv1D, which BOFT cannot wrap; supported: torch.nn.Linear, "
     r"torch.nn.Conv2d", True),
    (tm.tiny_convnet, dict(target_modules=["conv1d"]), r"is a Conv1d, which BOFT cannot wrap", True),
]


@pytest.mark.parametrize("builder, kwargs, message, peft_too", REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_layouts_and_layers_boft_cannot_take_are_refused_at_plan_time(builder, kwargs, message, peft_too):
    with pytest.raises(PlanError, match=message):
        _plan(builder(), **kwargs)
    if peft_too:   # the oracle agrees (peft skips the butterfly rules without its CUDA extension)
        import peft

        with warnings.catch_warnings(), pytest.raises((ValueError, TypeError)):
            warnings.simplefilter("ignore")
            peft.get_peft_model(builder(), peft.BOFTConfig(**kwargs))


class _Convs(nn.Module):
    def __init__(self, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, **{"kernel_size": 3, **conv_kwargs})

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("conv_kwargs, message", [
    (dict(groups=2), r"has groups=2"),
    (dict(dilation=2), r"dilation=\(2, 2\)"),
    (dict(kernel_size=(3, 1)), r"kernel_size=\(3, 1\)"),
    (dict(stride=(2, 1)), r"stride=\(2, 1\)"),
    (dict(padding="same"), r"padding='same'"),
    (dict(padding=1, padding_mode="reflect"), r"padding_mode='reflect'"),
])
def test_conv_geometries_peft_would_get_wrong_are_refused(conv_kwargs, message):
    with pytest.raises(PlanError, match=rf"'conv' \(Conv2d\).*{message}"):
        _plan(_Convs(**conv_kwargs), target_modules=["conv"], boft_block_size=0, boft_block_num=1)


def test_more_butterfly_factors_are_built_as_asked_and_said_to_differ_from_cpu_peft(caplog):
    model = tm.tiny_llama()
    with caplog.at_level(logging.WARNING):
        plan = _plan(model, target_modules=["q_proj"], boft_block_size=4, boft_n_butterfly_factor=2)
    assert any("fbd_cuda" in w and "would use one factor" in w for w in plan.warnings)
    assert {r.params["boft_n_butterfly_factor"] for r in plan.rewrites} == {2}
    config = surgery.BOFTConfig(target_modules=["q_proj"], boft_block_size=4, boft_n_butterfly_factor=2)
    peft_model = surgery.get_peft_model(model, config)
    shapes = {tuple(p.shape) for n, p in peft_model.named_parameters() if "boft_R" in n}
    assert shapes == {(2, 8, 4, 4)}


def test_a_checkpoint_decides_the_factor_count(tmp_path):
    """CPU PEFT saves one factor under a config saying 2; a GPU-trained adapter holds 2: both load as saved."""
    one = surgery.get_peft_model(tm.tiny_llama(), surgery.BOFTConfig(target_modules=["q_proj"], boft_block_size=4))
    one.save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(path.read_text().replace('"boft_n_butterfly_factor": 1', '"boft_n_butterfly_factor": 2'))
    loaded = surgery.PeftModel.from_pretrained(tm.tiny_llama(), str(tmp_path))
    assert {tuple(p.shape) for n, p in loaded.named_parameters() if "boft_R" in n} == {(1, 8, 4, 4)}
    assert any("holds 1 factor" in w for w in loaded.plan().warnings)
    ids = tm.token_batch()
    assert torch.equal(loaded(input_ids=ids).logits, one.eval()(input_ids=ids).logits)


def test_fan_in_fan_out_on_linear_is_noted():
    plan = _plan(tm.tiny_llama(), target_modules=["q_proj"], fan_in_fan_out=True)
    assert any("fan_in_fan_out=True" in w for w in plan.warnings)


def test_audit_table_columns_and_plan_on_a_meta_model():
    with torch.device("meta"):
        model = tm.tiny_llama()
    plan = _plan(model, target_modules=["q_proj", "down_proj"], boft_block_size=8)
    assert plan.columns == [["block", "boft_block_size"], ["blocks", "boft_block_num"],
                            ["factors", "boft_n_butterfly_factor"]]
    down = next(r for r in plan.rewrites if r.path.endswith("down_proj"))
    assert down.params == {"boft_block_size": 8, "boft_block_num": 8, "boft_n_butterfly_factor": 1}
    assert down.added_params == 8 * 8 * 8 + 32
