"""HRAConfig validation (each bad value refused by name), the layers PEFT's HRA cannot reproduce refused at plan
time, the plan's figures against PEFT's print_trainable_parameters, PEFT's initial vectors (same seed, same
hra_u, bit for bit) and what they give (the identity for even r; PEFT's non-identity for apply_GS and odd r)."""
from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
from torch import nn

import surgery
from surgery.errors import ConfigError, PlanError
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff, printed_line


@pytest.mark.parametrize("kwargs, words", [
    (dict(r=0), ["HRAConfig.r", "0", "> 0"]),
    (dict(r=-2), ["HRAConfig.r", "-2"]),
    (dict(r=2.0), ["HRAConfig.r", "2.0", "int"]),
    (dict(apply_GS="yes"), ["apply_GS", "yes", "bool"]),
    (dict(init_weights=None), ["init_weights", "None", "bool"]),
    (dict(bias="lora_only"), ["bias", "lora_only", "hra_only"]),
    (dict(layers_pattern="layers"), ["layers_pattern", "layers_to_transform"]),
    (dict(target_modules=".*q_proj", layers_to_transform=[0]), ["layers_to_transform", "regex"]),
    (dict(exclude_modules="(unclosed"), ["exclude_modules", "(unclosed", "regular expression"]),
])
def test_bad_values_are_refused_by_name(kwargs, words):
    with pytest.raises(ConfigError) as info:
        surgery.HRAConfig(**kwargs)
    for word in words:
        assert word in str(info.value)


class _Conv(nn.Module):
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("conv, words", [
    (nn.Conv2d(4, 4, 3, groups=2), ["groups=2"]),
    (nn.Conv2d(4, 4, (3, 1)), ["non-square kernel (3, 1)"]),
    (nn.Conv2d(4, 4, 3, dilation=2), ["dilation=(2, 2)"]),
    (nn.Conv2d(4, 4, 3, padding=(1, 0)), ["padding=(1, 0)"]),
    (nn.Conv2d(4, 4, 3, padding="same"), ["padding='same'"]),
    (nn.Conv2d(4, 4, 3, stride=(2, 1)), ["stride=(2, 1)"]),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), ["padding_mode='reflect'"]),
])
def test_convolutions_peft_would_compute_differently_are_refused(conv, words):
    with pytest.raises(PlanError) as info:
        surgery.plan(_Conv(conv), surgery.HRAConfig(target_modules=["conv"], r=2))
    for word in words + ["'conv'", "exclude_modules"]:
        assert word in str(info.value)


@pytest.mark.parametrize("target", ["c_attn", "wte"])
def test_conv1d_and_embeddings_are_refused_naming_what_hra_wraps(target):
    with pytest.raises(PlanError, match="supported: torch.nn.Linear, torch.nn.Conv2d"):
        surgery.plan(tm.tiny_gpt2(), surgery.HRAConfig(target_modules=[target], r=2))


@pytest.mark.parametrize("builder, kwargs", [
    (tm.tiny_llama, dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4)),
    (tm.tiny_convnet, dict(target_modules=["conv2d", "conv2d_strided", "head"], r=6)),
    (tm.tiny_bert_seq_cls, dict(target_modules=["query", "value"], r=2, task_type="SEQ_CLS", bias="hra_only")),
])
def test_plan_totals_and_printed_line_equal_peft(builder, kwargs):
    plan = surgery.plan(builder(), surgery.HRAConfig(**kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(builder(), peft.HRAConfig(**kwargs))
    assert plan.totals_line() == printed_line(theirs)
    assert printed_line(surgery.get_peft_model(builder(), surgery.HRAConfig(**kwargs))) == printed_line(theirs)


@pytest.mark.filterwarnings("ignore:The symmetric initialization")
@pytest.mark.parametrize("kwargs, identity", [
    (dict(r=4), True),
    (dict(r=4, apply_GS=True), False),     # Gram-Schmidt of repeated vectors: normalised rounding noise
    (dict(r=3), False),                    # odd r: random vectors
    (dict(r=4, init_weights=False), False),
])
def test_initial_vectors_are_peft_s_and_so_is_the_start(kwargs, identity):
    base = tm.tiny_convnet()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    config = dict(target_modules=["conv2d", "head"], **kwargs)
    torch.manual_seed(11)
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.HRAConfig(**config))
    torch.manual_seed(11)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.HRAConfig(**config))
    mine, want = surgery.get_peft_model_state_dict(ours), peft.get_peft_model_state_dict(theirs)
    assert mine.keys() == want.keys() and all(torch.equal(mine[k], want[k]) for k in mine)
    with torch.no_grad():
        out = ours(x)
        assert max_diff(out, theirs(x)) <= 1e-6
        assert (max_diff(out, base(x)) <= 1e-6) == identity


def test_plan_notes_odd_rank_and_gram_schmidt_start():
    odd = surgery.plan(tm.tiny_llama(), surgery.HRAConfig(target_modules=["q_proj"], r=3))
    gs = surgery.plan(tm.tiny_llama(), surgery.HRAConfig(target_modules=["q_proj"], r=2, apply_GS=True))
    assert any("r=3 is odd" in w for w in odd.warnings)
    assert any("apply_GS=True" in w and "identity" in w for w in gs.warnings)
    plain = surgery.plan(tm.tiny_llama(), surgery.HRAConfig(target_modules=["q_proj"], r=2))
    assert plain.warnings == []


def test_default_target_table_is_peft_s():
    from peft.utils.other import TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING

    assert surgery.methods.hra.SPEC.default_targets == TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING
