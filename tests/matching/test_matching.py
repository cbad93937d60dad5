"""Matching: which modules a config adapts, table-driven, and cross-checked against real peft."""
from __future__ import annotations

import pytest
import transformers

import surgery
from tests.support import tiny_models as tm
from tests.support.helpers import peft_adapted_names
from surgery.errors import ConfigError, PlanError, SurgeryError, TargetNotFoundError
from surgery.matching.selectors import Layers, Names, Regex, pattern_key

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def paths(model, **kwargs) -> list[str]:
    return surgery.plan(model, surgery.LoraConfig(**kwargs)).paths()


def llama_paths(layers=(0, 1), names=LLAMA_LINEAR) -> list[str]:
    out = []
    for i in layers:
        for n in names:
            part = "self_attn" if n in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            out.append(f"model.layers.{i}.{part}.{n}")
    return out


@pytest.fixture(scope="module")
def llama():
    return tm.tiny_llama()


# -- the selectors themselves ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, fqn, expected", [
    ("q_proj", "model.layers.0.self_attn.q_proj", True),          # '.'-suffix
    ("q_proj", "q_proj", True),                                    # exact
    ("proj", "model.layers.0.self_attn.q_proj", False),            # a substring is not a suffix
    ("_proj", "model.layers.0.self_attn.q_proj", False),
    ("attn.q_proj", "model.layers.0.self_attn.q_proj", False),     # suffix must start at a '.'
    ("self_attn.q_proj", "model.layers.0.self_attn.q_proj", True),  # dotted suffix
    ("layers.0.self_attn.q_proj", "model.layers.0.self_attn.q_proj", True),
    ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.q_proj", True),
    ("q", "model.layers.0.self_attn.q_proj", False),
    ("q_proj", "model.layers.0.self_attn.q_proj.lora_A", False),    # a prefix is not a match
    ("q_proj", "model.layers.0.self_attn.xq_proj", False),
    ("0", "model.layers.0", True),
])
def test_names_selector_is_exact_or_dot_suffix(name, fqn, expected):
    assert Names((name,))(fqn, {}) is expected


@pytest.mark.parametrize("pattern, fqn, expected", [
    (r".*q_proj", "model.layers.0.self_attn.q_proj", True),
    (r"q_proj", "model.layers.0.self_attn.q_proj", False),          # fullmatch, not search
    (r"model\.layers\.\d+\.self_attn\.(q|v)_proj", "model.layers.12.self_attn.v_proj", True),
    (r"model\.layers\.\d+\.self_attn\.(q|v)_proj", "model.layers.12.self_attn.k_proj", False),
    (r".*\.layers\.1\..*", "model.layers.1.mlp.up_proj", True),
    (r".*\.layers\.1\..*", "model.layers.11.mlp.up_proj", False),
    (r".*proj", "model.layers.0.self_attn.q_proj.lora_A", False),
])
def test_regex_selector_is_fullmatch(pattern, fqn, expected):
    assert Regex(pattern)(fqn, {}) is expected


@pytest.mark.parametrize("indexes, patterns, fqn, expected", [
    ((1,), (), "model.layers.1.self_attn.q_proj", True),
    ((1,), (), "model.layers.0.self_attn.q_proj", False),
    ((0,), (), "model.layers.0.mlp.experts.1.w1", True),            # the first index, not a nested one
    ((1,), (), "model.layers.0.mlp.experts.1.w1", False),
    ((0,), ("h",), "transformer.h.0.attn.c_attn", True),
    ((0,), ("layers",), "transformer.h.0.attn.c_attn", False),
    ((1,), ("layer", "block"), "decoder.block.1.layer.0.SelfAttention.q", False),  # patterns tried in order
    ((0,), ("layer", "block"), "decoder.block.1.layer.0.SelfAttention.q", True),
    ((1,), ("block", "layer"), "decoder.block.1.layer.0.SelfAttention.q", True),
])
def test_layers_selector(indexes, patterns, fqn, expected):
    assert Layers(indexes, patterns)(fqn, {}) is expected


@pytest.mark.parametrize("patterns, fqn, key", [
    ({"q_proj": 2}, "model.layers.0.self_attn.q_proj", "q_proj"),
    ({"proj": 2}, "model.layers.0.self_attn.q_proj", None),          # PEFT's (.*\.)?(key)$: whole segment
    ({r"layers\.1\..*": 2}, "model.layers.1.mlp.up_proj", r"layers\.1\..*"),
    ({"mlp.down_proj": 2, "down_proj": 3}, "model.layers.0.mlp.down_proj", "mlp.down_proj"),  # first key wins
])
def test_pattern_key(patterns, fqn, key):
    assert pattern_key(patterns, fqn) == key


# -- the planner over real models ---------------------------------------------------------------------------
def test_list_target_exact_and_suffix(llama):
    assert paths(llama, target_modules=["q_proj", "v_proj"]) == llama_paths(names=("q_proj", "v_proj"))
    assert paths(llama, target_modules=["model.layers.1.self_attn.q_proj"]) == ["model.layers.1.self_attn.q_proj"]
    assert paths(llama, target_modules=["mlp.up_proj"]) == llama_paths(names=("up_proj",))


def test_overlapping_names_both_count_as_found(llama):
    assert paths(llama, target_modules=["q_proj", "self_attn.q_proj"]) == llama_paths(names=("q_proj",))


def test_substring_target_matches_nothing(llama):
    with pytest.raises(TargetNotFoundError) as info:
        paths(llama, target_modules=["proj"])
    assert "'proj'" in str(info.value)


def test_string_target_is_a_fullmatch_regex(llama):
    assert paths(llama, target_modules=r".*\.(q|v)_proj") == llama_paths(names=("q_proj", "v_proj"))
    assert paths(llama, target_modules=r"model\.layers\.1\.mlp\..*_proj") == llama_paths(
        layers=(1,), names=("gate_proj", "up_proj", "down_proj"))
    with pytest.raises(TargetNotFoundError):
        paths(llama, target_modules=r"q_proj")  # no search semantics


def test_all_linear_excludes_the_output_embeddings(llama):
    got = paths(llama, target_modules="all-linear")
    assert got == llama_paths() and "lm_head" not in got
    assert paths(llama, target_modules=["all-linear"]) == got
    assert paths(llama, target_modules="ALL-LINEAR") == got


def test_all_linear_on_gpt2_takes_conv1d_and_skips_lm_head():
    got = paths(tm.tiny_gpt2(), target_modules="all-linear")
    assert got == [f"transformer.h.{i}.{n}" for i in (0, 1)
                   for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


@pytest.mark.parametrize("model, head", [
    (lambda: tm.tiny_bert_seq_cls(), "classifier"),
    (lambda: transformers.LlamaForSequenceClassification(tm.llama_config(num_labels=3)), "score"),
])
def test_all_linear_for_seq_cls_without_output_embeddings_skips_the_head(model, head):
    m = model()
    assert m.get_output_embeddings() is None
    got = paths(m, target_modules="all-linear", task_type="SEQ_CLS")
    assert head not in got and got
    # the head is trained in full instead (modules_to_save), as in PEFT
    p = surgery.plan(m, surgery.LoraConfig(target_modules="all-linear", task_type="SEQ_CLS"))
    assert [s.path for s in p.modules_to_save] == [head]


def test_all_linear_without_task_on_model_without_head_takes_every_linear():
    got = paths(tm.tiny_bert(), target_modules="all-linear")
    assert "pooler.dense" in got and len(got) == 2 * 6 + 1


def test_exclude_modules_list_and_regex(llama):
    assert paths(llama, target_modules=["q_proj", "v_proj"], exclude_modules=["model.layers.0.self_attn.v_proj"]) \
        == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    assert paths(llama, target_modules="all-linear", exclude_modules=r".*\.mlp\..*") == llama_paths(
        names=("q_proj", "k_proj", "v_proj", "o_proj"))
    # a name that is entirely excluded still exists: no TargetNotFoundError (as peft)
    assert paths(llama, target_modules=["q_proj", "o_proj"], exclude_modules=["o_proj"]) == llama_paths(
        names=("q_proj",))
    with pytest.raises(TargetNotFoundError):
        paths(llama, target_modules=["q_proj"], exclude_modules=["q_proj"])  # nothing left at all


@pytest.mark.parametrize("kwargs, expected", [
    (dict(layers_to_transform=1), llama_paths(layers=(1,), names=("q_proj", "down_proj"))),
    (dict(layers_to_transform=[0]), llama_paths(layers=(0,), names=("q_proj", "down_proj"))),
    (dict(layers_to_transform=[0, 1]), llama_paths(names=("q_proj", "down_proj"))),
    (dict(layers_to_transform=[1], layers_pattern="layers"), llama_paths(layers=(1,), names=("q_proj", "down_proj"))),
    (dict(layers_to_transform=0, layers_pattern=["h", "layers"]),
     llama_paths(layers=(0,), names=("q_proj", "down_proj"))),
])
def test_layers_to_transform(llama, kwargs, expected):
    assert paths(llama, target_modules=["q_proj", "down_proj"], **kwargs) == expected


def test_layers_to_transform_with_pattern_on_gpt2_and_t5():
    assert paths(tm.tiny_gpt2(), target_modules=["c_attn"], layers_to_transform=[1], layers_pattern="h") == [
        "transformer.h.1.attn.c_attn"]
    assert paths(tm.tiny_t5(), target_modules=["q"], layers_to_transform=1, layers_pattern="block") == [
        "encoder.block.1.layer.0.SelfAttention.q", "decoder.block.1.layer.0.SelfAttention.q",
        "decoder.block.1.layer.1.EncDecAttention.q"]


@pytest.mark.parametrize("kwargs, words", [
    (dict(layers_to_transform=[2]), ["layers_to_transform", "[2]", "0..1"]),
    (dict(layers_to_transform=[0, 5]), ["[5]"]),
    (dict(layers_to_transform=0, layers_pattern="blocks"), ["blocks"]),
])
def test_layers_out_of_range_is_a_config_error(llama, kwargs, words):
    with pytest.raises(ConfigError) as info:
        paths(llama, target_modules=["q_proj"], **kwargs)
    for word in words:
        assert word in str(info.value)


def test_rank_and_alpha_patterns(llama):
    p = surgery.plan(llama, surgery.LoraConfig(
        target_modules=["q_proj", "v_proj", "down_proj"], r=8, lora_alpha=16,
        rank_pattern={"v_proj": 4, r"model\.layers\.1\.mlp\.down_proj": 2}, alpha_pattern={"q_proj": 2}))
    got = {r.path: (r["r"], r["lora_alpha"], r["scaling"]) for r in p.rewrites}
    assert got["model.layers.0.self_attn.q_proj"] == (8, 2, 2 / 8)
    assert got["model.layers.0.self_attn.v_proj"] == (4, 16, 16 / 4)
    assert got["model.layers.0.mlp.down_proj"] == (8, 16, 16 / 8)
    assert got["model.layers.1.mlp.down_proj"] == (2, 16, 16 / 2)
    p = surgery.plan(llama, surgery.LoraConfig(target_modules=["v_proj"], r=16, lora_alpha=8, use_rslora=True,
                                               rank_pattern={"v_proj": 4}))
    assert {r["scaling"] for r in p.rewrites} == {8 / 2}
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(
        target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 2}))
    layer = model.get_base_model().model.layers[0].self_attn
    assert layer.v_proj.lora_A["default"].weight.shape == (2, 32)
    assert layer.q_proj.lora_A["default"].weight.shape == (8, 32)


def test_target_types_by_class_name(llama):
    assert paths(llama, target_types=["Embedding"]) == ["model.embed_tokens"]
    assert paths(llama, target_types=["Linear"]) == llama_paths() + ["lm_head"]
    assert paths(llama, target_types=["Linear"], exclude_modules=["lm_head", "mlp.down_proj"]) == [
        p for p in llama_paths() if not p.endswith("down_proj")]
    # both set: a module must satisfy both
    assert paths(llama, target_types=["Linear"], target_modules=r".*layers\.0\..*") == llama_paths(layers=(0,))
    gpt2 = paths(tm.tiny_gpt2(), target_types=["Conv1D"], layers_to_transform=[0])
    assert gpt2 == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc",
                    "transformer.h.0.mlp.c_proj"]


def test_target_types_are_resolved_to_names_in_the_saved_config():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_types=["Linear"],
                                                                       exclude_modules=["lm_head"]))
    saved = model.peft_config["default"].to_dict()
    assert "target_types" not in saved
    assert sorted(saved["target_modules"]) == sorted(LLAMA_LINEAR)


def test_unwrappable_target_is_a_plan_error(llama):
    with pytest.raises(PlanError, match="LlamaMLP"):
        paths(llama, target_modules=["mlp"])
    with pytest.raises(PlanError):
        paths(llama, target_modules=".*")


@pytest.mark.parametrize("kwargs", [
    dict(target_modules="all-linear"), dict(target_modules=r".*proj.*"), dict(target_types=["Linear"]),
    dict(target_modules=["q_proj", "v_proj", "k_proj"]),
])
def test_adapter_internals_are_never_matched(kwargs):
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_modules="all-linear", r=2))
    base = model.get_base_model()
    p = surgery.plan(base, surgery.LoraConfig(**kwargs), "second")
    assert p.rewrites and {r.action for r in p.rewrites if r.path != "lm_head"} == {"add"}
    for path in p.paths():
        assert "lora_" not in path and "base_layer" not in path, path
    # and applying it adds a second adapter beside the first on the same layers
    model.add_adapter("second", surgery.LoraConfig(**kwargs))
    q = base.model.layers[0].self_attn.q_proj
    assert sorted(q.lora_A) == ["default", "second"]
    assert not any("lora_A.second.lora_A" in n or "base_layer.base_layer" in n for n, _ in base.named_modules())


def test_same_adapter_name_twice_is_refused():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(SurgeryError, match="default"):
        surgery.plan(model.get_base_model(), surgery.LoraConfig(target_modules=["q_proj"]), "default")


def test_typo_target_warns_with_the_real_name_and_adapts_the_rest(llama):
    # As PEFT: a target list shared across architectures may name modules this model lacks.
    with pytest.warns(surgery.PeftWarning) as record:
        assert all(p.endswith("v_proj") for p in paths(llama, target_modules=["q_prj", "v_proj"]))
    msg = str(record[0].message)
    assert "'q_prj'" in msg and "did you mean" in msg and "'q_proj'" in msg
    assert "'v_proj' (did you mean" not in msg  # only the name that matched nothing is reported


def test_typo_in_every_target_is_an_error_naming_the_real_name(llama):
    with pytest.raises(TargetNotFoundError) as info:
        paths(llama, target_modules=["q_prj", "v_prj"])
    msg = str(info.value)
    assert "'q_prj'" in msg and "'q_proj'" in msg and "'v_prj'" in msg and "did you mean" in msg


def test_nothing_matched_is_a_target_not_found_error(llama):
    with pytest.raises(TargetNotFoundError):
        paths(llama, target_modules=r".*\.nothing_here")
    with pytest.raises(TargetNotFoundError):
        paths(llama, target_types=["Conv2d"])
    assert issubclass(TargetNotFoundError, SurgeryError)


def test_missing_targets_are_tolerated_when_loading(llama):
    p = surgery.plan(llama, surgery.LoraConfig(target_modules=["q_proj", "not_there"]), strict_targets=False)
    assert p.paths() == llama_paths(names=("q_proj",))
    with pytest.raises(TargetNotFoundError):
        surgery.plan(llama, surgery.LoraConfig(target_modules=["not_there"]), strict_targets=False)


def test_default_targets_by_model_type(llama):
    assert paths(llama) == llama_paths(names=("q_proj", "v_proj"))
    assert paths(tm.tiny_t5()) == paths(tm.tiny_t5(), target_modules=["q", "v"])
    with pytest.raises(ConfigError, match="target_modules"):
        paths(tm.tiny_convnet())


def test_modules_to_save_are_not_targeted():
    m = tm.tiny_embed_mlp()
    p = surgery.plan(m, surgery.LoraConfig(target_modules=["lin0", "lin1"], modules_to_save=["lin1"]))
    assert p.paths() == ["lin0"] and [s.path for s in p.modules_to_save] == ["lin1"]


# -- cross-check with real peft --------------------------------------------------------------------------
CROSS_CHECK = [
    ("llama", dict(target_modules=["q_proj", "v_proj"])),
    ("llama", dict(target_modules="all-linear", task_type="CAUSAL_LM")),
    ("llama", dict(target_modules=r".*\.(q|k)_proj")),
    ("llama", dict(target_modules=r"model\.layers\.1\..*_proj")),
    ("llama", dict(target_modules=["q_proj", "down_proj"], layers_to_transform=[1])),
    ("llama", dict(target_modules=["q_proj", "down_proj"], layers_to_transform=0, layers_pattern="layers")),
    ("llama", dict(target_modules=["q_proj", "v_proj", "o_proj"], exclude_modules=["o_proj"])),
    ("llama", dict(target_modules="all-linear", exclude_modules=r".*mlp.*")),
    ("llama", dict(target_modules=["self_attn.q_proj", "mlp.up_proj", "q_proj"])),
    ("llama", dict(target_modules=["embed_tokens", "lm_head", "o_proj"])),
    # an exact full-path target is taken whatever layers_to_transform says; suffixes are filtered (peft's rule)
    ("llama", dict(target_modules=["model.layers.0.self_attn.q_proj", "v_proj"], layers_to_transform=[1])),
    ("gpt2", dict(target_modules=["c_attn"])),
    ("gpt2", dict(target_modules="all-linear")),
    ("gpt2", dict(target_modules=["c_attn", "c_proj", "wte"], layers_to_transform=[0], layers_pattern="h")),
    ("gpt2", dict(target_modules=["c_proj"], exclude_modules=["mlp.c_proj"])),
    ("bert_cls", dict(target_modules="all-linear", task_type="SEQ_CLS")),
    ("bert_cls", dict(target_modules=["query", "value"], task_type="SEQ_CLS")),
    ("bert", dict(target_modules="all-linear")),
    ("bert", dict(target_modules=["dense"])),
    ("bert", dict(target_modules=["query", "key"], layers_to_transform=[1], layers_pattern="layer")),
    ("bert", dict(target_modules=r".*attention\.self\.(query|value)", exclude_modules=[r"encoder.layer.0.attention.self.query"])),
    ("t5", dict(target_modules=["q", "v"])),
    ("t5", dict(target_modules="all-linear")),
    ("t5", dict(target_modules=["q", "v"], layers_to_transform=[0])),
    ("t5", dict(target_modules=["wi", "wo", "k"], exclude_modules=["decoder.block.1.layer.2.DenseReluDense.wo"])),
    ("t5", dict(target_modules=["q"], layers_to_transform=[1], layers_pattern=["block"])),
    ("conv", dict(target_modules=["conv2d", "conv1d", "conv3d", "head"])),
    ("embedding", dict(target_modules=["emb", "lin0"], modules_to_save=["lin1"])),
]
BUILDERS = {"llama": tm.tiny_llama, "gpt2": tm.tiny_gpt2, "bert_cls": tm.tiny_bert_seq_cls, "bert": tm.tiny_bert,
            "t5": tm.tiny_t5, "conv": tm.tiny_convnet, "embedding": tm.tiny_embed_mlp}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("model_name, kwargs", CROSS_CHECK, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CROSS_CHECK)])
def test_matched_modules_equal_peft(model_name, kwargs):
    base = BUILDERS[model_name]()
    expected = peft_adapted_names(base, **kwargs)
    assert expected, "the oracle adapted nothing; the case is useless"
    assert sorted(paths(base, **kwargs)) == expected
