"""LoHa and LoKr configs, plans and initialisation against peft.

Configs: every bad value is refused with a ConfigError naming the field and the value. Plans: the plan's
totals equal peft's print_trainable_parameters for the same model and config (exact), the audit table shows
the method's columns, unsupported layers are refused with a message naming the layer and what is supported.
Init: under the same seed surgery's fresh factors equal peft's bit for bit (same shapes, same RNG order), and
the default init leaves the model's outputs unchanged.
"""
from __future__ import annotations

import copy
import re
import warnings

import peft
import pytest
import torch

import surgery
from surgery.errors import ConfigError, PlanError
from tests.support import tiny_models as tm
from tests.support.helpers import printed_line

from .pairs import base_holder, inputs

BAD = [
    ("LoHaConfig", dict(r=0), "r = 0"),
    ("LoHaConfig", dict(r=-2), "r = -2"),
    ("LoHaConfig", dict(alpha=0), "alpha = 0"),
    ("LoHaConfig", dict(rank_dropout=-0.1), "rank_dropout = -0.1"),
    ("LoHaConfig", dict(rank_dropout=float("nan")), "rank_dropout = nan"),
    ("LoHaConfig", dict(module_dropout=1.5), "module_dropout = 1.5"),
    ("LoHaConfig", dict(rank_dropout=1.0), "rank_dropout = 1.0"),        # LoHa always divides by the mean
    ("LoHaConfig", dict(r="8"), "r = '8'"),
    ("LoHaConfig", dict(init_weights="lycoris"), "init_weights = 'lycoris'"),   # a LoKr-only value
    ("LoHaConfig", dict(use_effective_conv2d=1), "use_effective_conv2d = 1"),
    ("LoHaConfig", dict(target_modules="(q"), "target_modules = '(q'"),
    ("LoHaConfig", dict(layers_pattern="layers"), "layers_pattern = 'layers'"),
    ("LoHaConfig", dict(rank_pattern={"q_proj": 0}), "rank_pattern"),
    ("LoHaConfig", dict(alpha_pattern={"q_proj": -1}), "alpha_pattern"),
    ("LoKrConfig", dict(r=0), "r = 0"),
    ("LoKrConfig", dict(decompose_factor=0), "decompose_factor = 0"),
    ("LoKrConfig", dict(decompose_factor=-3), "decompose_factor = -3"),
    ("LoKrConfig", dict(decompose_factor=2.0), "decompose_factor = 2.0"),
    ("LoKrConfig", dict(rank_dropout=1.0, rank_dropout_scale=True), "rank_dropout = 1.0"),
    ("LoKrConfig", dict(init_weights="gaussian"), "init_weights = 'gaussian'"),
    ("LoKrConfig", dict(decompose_both="yes"), "decompose_both = 'yes'"),
    ("LoKrConfig", dict(module_dropout=-1), "module_dropout = -1"),
]


@pytest.mark.parametrize("config, kwargs, named", BAD, ids=[f"{c}-{n}" for c, _, n in BAD])
def test_bad_values_are_refused_naming_field_and_value(config, kwargs, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        getattr(surgery, config)(**kwargs)


def test_lokr_rank_dropout_one_without_rescaling_is_allowed():
    assert surgery.LoKrConfig(rank_dropout=1.0).rank_dropout == 1.0   # zero delta in training, no NaN (PEFT)


PLANS = [
    ("LoHaConfig", "tiny_llama", dict(target_modules="all-linear", r=4, rank_pattern={"down_proj": 2})),
    ("LoHaConfig", "tiny_t5", dict(target_modules=["q", "v", "wi"], r=2)),
    ("LoHaConfig", "tiny_bert_seq_cls", dict(task_type="SEQ_CLS", target_modules=["query", "value"], r=8)),
    ("LoHaConfig", "tiny_convnet", dict(target_modules=["conv2d", "conv2d_strided", "conv1d", "head"], r=3,
                                        use_effective_conv2d=True)),
    ("LoHaConfig", "tiny_llama", dict(r=4)),   # PEFT's default targets for llama
    ("LoKrConfig", "tiny_llama", dict(target_modules="all-linear", r=2, decompose_both=True)),
    ("LoKrConfig", "tiny_llama", dict(target_modules=["q_proj", "up_proj"], r=8, decompose_factor=4)),
    ("LoKrConfig", "tiny_t5", dict(target_modules=["q", "v", "wo"], r=1, rank_pattern={"wo": 16})),
    ("LoKrConfig", "tiny_convnet", dict(target_modules=["conv2d", "conv2d_strided", "conv1d", "head"], r=1,
                                        use_effective_conv2d=True)),
    ("LoKrConfig", "tiny_convnet", dict(target_modules=["conv2d", "conv2d_strided", "conv1d"], r=8)),
]


@pytest.mark.parametrize("config, builder, kwargs", PLANS)
def test_plan_totals_and_printed_line_equal_peft(config, builder, kwargs):
    base = getattr(tm, builder)()
    plan = surgery.plan(base, getattr(surgery, config)(**kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), getattr(peft, config)(**kwargs))
    assert plan.totals_line() == printed_line(theirs)
    ours = surgery.get_peft_model(copy.deepcopy(base), getattr(surgery, config)(**kwargs))
    assert printed_line(ours) == printed_line(theirs)
    adapted = sorted(n for n, m in ours.named_modules() if getattr(m, "_surgery_adapter_layer", False)
                     and "modules_to_save" not in type(m).__name__.lower() and hasattr(m, "r"))
    assert adapted == sorted(n for n, m in theirs.named_modules() if hasattr(m, "rank_dropout"))


def test_audit_tables_show_the_method_columns():
    meta = surgery.plan(tm.tiny_convnet(), surgery.LoKrConfig(target_modules=["conv2d", "head"], r=1,
                                                              use_effective_conv2d=True)).table()
    assert "W1⊗W2" in meta and "(2x1) ⊗ (CP 1x1x3x3·1x4·1x3)" in meta and "LOKR [CP]" in meta
    assert "(1x2) ⊗ (5x1·1x4)" in meta     # head 8 -> 5: out (1, 5), in (2, 4); r=1 < 5/2: W2 low-rank
    loha = surgery.plan(tm.tiny_convnet(), surgery.LoHaConfig(target_modules=["conv2d"], r=2, alpha=4,
                                                              use_effective_conv2d=True)).table()
    assert re.search(r"conv2d\s+Conv2d\s+8x3x3x3\s+LOHA \[CP\]\s+2\s+4\s+2\s+", loha), loha


@pytest.mark.parametrize("config", ["LoHaConfig", "LoKrConfig"])
@pytest.mark.parametrize("builder, targets, named", [
    ("tiny_gpt2", ["c_attn"], "transformers Conv1D"),
    ("tiny_convnet", ["conv3d"], "Conv3d"),
    ("tiny_embed_mlp", ["emb"], "Embedding"),
])
def test_unsupported_layers_are_refused_with_the_supported_list(config, builder, targets, named):
    with pytest.raises(PlanError, match=named) as err:
        surgery.plan(getattr(tm, builder)(), getattr(surgery, config)(target_modules=targets))
    assert "torch.nn.Linear" in str(err.value) and "Conv2d" in str(err.value)


INITS = [("LoHaConfig", True), ("LoHaConfig", False), ("LoKrConfig", True), ("LoKrConfig", False),
         ("LoKrConfig", "lycoris")]


@pytest.mark.parametrize("config, init", INITS)
@pytest.mark.parametrize("kind, extra", [("linear", {}), ("conv2d", {"use_effective_conv2d": True}),
                                         ("conv1d", {"decompose_both": True})])
def test_fresh_factors_equal_peft_under_the_same_seed(config, init, kind, extra):
    if config == "LoHaConfig":
        extra = {k: v for k, v in extra.items() if k != "decompose_both"}
    kwargs = dict(target_modules=["layer"], r=1, init_weights=init, **extra)
    base = base_holder(kind)
    torch.manual_seed(42)
    ours = surgery.get_peft_model(copy.deepcopy(base), getattr(surgery, config)(**kwargs))
    torch.manual_seed(42)
    theirs = peft.get_peft_model(copy.deepcopy(base), getattr(peft, config)(**kwargs))
    mine = dict(ours.named_parameters())
    peft_params = {n: p for n, p in theirs.named_parameters() if p.requires_grad}
    assert peft_params and set(peft_params) <= set(mine)
    for name, p in peft_params.items():
        assert torch.equal(mine[name], p), name
    x = inputs(kind)
    with torch.no_grad():
        same = torch.equal(ours(x), base(x))
    assert same == (init is not False)   # the default inits start at ΔW = 0


@pytest.mark.parametrize("config", ["LoHaConfig", "LoKrConfig"])
def test_half_precision_base_matches_peft(config):
    base = tm.tiny_llama().to(torch.bfloat16)
    kwargs = dict(target_modules=["q_proj", "v_proj", "down_proj"], r=2, init_weights=False)
    ours = surgery.get_peft_model(copy.deepcopy(base), getattr(surgery, config)(**kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), getattr(peft, config)(**kwargs))
    peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours))
    factors = [p for n, p in ours.named_parameters() if ".default" in n]
    assert factors and all(p.dtype == torch.float32 for p in factors)   # autocast_adapter_dtype, as PEFT
    ids = tm.token_batch()
    with torch.no_grad():
        got, want = ours(input_ids=ids).logits, theirs(input_ids=ids).logits
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    merged_ours = copy.deepcopy(ours).merge_and_unload().state_dict()
    merged_theirs = copy.deepcopy(theirs).merge_and_unload().state_dict()
    assert all(torch.equal(merged_ours[k], merged_theirs[k]) for k in merged_theirs)
