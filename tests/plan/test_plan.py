"""Plan: a pure dry run (model untouched, meta device), JSON round trip, tables, and PEFT's totals line."""
from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
import transformers

import surgery
from tests.support import tiny_models as tm
from tests.support.helpers import peft_model, printed_line, surgery_model
from surgery.archs import load_model_for_planning, resolve_config
from surgery.errors import ConfigError
from surgery.plan.model import Plan

peft = pytest.importorskip("peft")


def snapshot(model: torch.nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, type(m), m) for n, m in model.named_modules()],
            {n: p.requires_grad for n, p in model.named_parameters()},
            {n: id(p) for n, p in model.named_parameters()})


def assert_unchanged(model, snap):
    state, modules, grads, ids = snap
    now = model.state_dict()
    assert list(now) == list(state)
    assert all(torch.equal(now[k], state[k]) for k in state)
    assert [(n, type(m), m) for n, m in model.named_modules()] == modules  # same objects, same classes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert {n: id(p) for n, p in model.named_parameters()} == ids


# -- purity ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("builder, kwargs", [
    (tm.tiny_llama, dict(target_modules="all-linear", use_dora=True, bias="all")),
    (tm.tiny_gpt2, dict(target_modules=["c_attn", "wte"], modules_to_save=["ln_f"])),
    (tm.tiny_bert_seq_cls, dict(target_modules=["query", "value"], task_type="SEQ_CLS", bias="lora_only")),
    (tm.tiny_convnet, dict(target_modules=["conv2d", "conv3d", "head"])),
])
def test_plan_leaves_the_model_unchanged(builder, kwargs):
    model = builder()
    model.get_submodule(next(n for n, _ in model.named_modules() if n)).requires_grad_(False)  # mixed flags
    snap = snapshot(model)
    p = surgery.plan(model, surgery.LoraConfig(**kwargs))
    assert p.rewrites and not p.applied
    assert_unchanged(model, snap)


def test_plan_on_an_adapted_model_leaves_it_unchanged():
    model = surgery_model(tm.tiny_llama(), target_modules=["q_proj", "v_proj"])
    base = model.get_base_model()
    snap = snapshot(base)
    p = surgery.plan(base, surgery.LoraConfig(target_modules="all-linear", r=2), "second")
    assert {r.action for r in p.rewrites} == {"wrap", "add"}
    assert_unchanged(base, snap)
    q = base.model.layers[0].self_attn.q_proj
    assert list(q.lora_A) == ["default"]


def test_failed_plan_leaves_the_model_unchanged():
    model = tm.tiny_llama()
    snap = snapshot(model)
    with pytest.raises(surgery.SurgeryError):
        surgery.plan(model, surgery.LoraConfig(target_modules=["q_proj", "mlp"]))
    assert_unchanged(model, snap)


def test_plan_works_on_a_meta_device_model_and_matches_the_real_one():
    with torch.device("meta"):
        meta = transformers.LlamaForCausalLM(tm.llama_config())
    assert all(p.device.type == "meta" for p in meta.parameters())
    cfg = surgery.LoraConfig(target_modules="all-linear", r=4, use_dora=True, rank_pattern={"down_proj": 2})
    p_meta = surgery.plan(meta, cfg)
    p_real = surgery.plan(tm.tiny_llama(), cfg)
    assert p_meta.rewrites == p_real.rewrites
    assert p_meta.totals_line() == p_real.totals_line()
    assert all(p.device.type == "meta" for p in meta.parameters())  # nothing materialised


def test_plan_on_a_big_meta_model_is_fast_and_exact():
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
            vocab_size=32000))
    p = surgery.plan(model, surgery.LoraConfig(target_modules=["q_proj", "v_proj"], r=8))
    assert len(p.rewrites) == 64
    assert {r.base_shape for r in p.rewrites} == {(4096, 4096)}
    assert {r.added_params for r in p.rewrites} == {8 * (4096 + 4096)}
    assert p.trainable_params == 4_194_304


# -- JSON --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("builder, kwargs", [
    (tm.tiny_llama, dict(target_modules="all-linear", r=4, lora_alpha=16, use_rslora=True,
                         rank_pattern={"down_proj": 2}, alpha_pattern={"o_proj": 3.5}, task_type="CAUSAL_LM")),
    (tm.tiny_gpt2, dict(target_modules=["c_attn", "wte"], use_dora=False, modules_to_save=["ln_f"])),
    (tm.tiny_bert_seq_cls, dict(target_modules=["query"], task_type="SEQ_CLS", bias="all")),
])
def test_plan_json_round_trip(builder, kwargs):
    p = surgery.plan(builder(), surgery.LoraConfig(**kwargs))
    text = p.to_json()
    again = Plan.from_json(text)
    assert again == p
    for f in ("adapter_name", "peft_type", "task_type", "rewrites", "modules_to_save", "trainable_bias_params",
              "base_params", "config", "rules", "warnings", "applied"):
        assert getattr(again, f) == getattr(p, f), f
    assert again.totals_line() == p.totals_line()
    assert again.to_json() == text
    totals = json.loads(text)["totals"]
    assert (totals["trainable_params"], totals["all_params"]) == (p.trainable_params, p.all_params)
    # the recorded config rebuilds the resolved config
    assert surgery.LoraConfig.from_dict(again.config).to_dict() == again.config


def test_applied_plan_json_round_trip():
    model = surgery_model(tm.tiny_llama(), target_modules=["q_proj"])
    p = model.plan()
    assert p.applied
    assert Plan.from_json(p.to_json()) == p


# -- tables ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_table_and_markdown_list_every_module_and_the_totals(fmt):
    p = surgery.plan(tm.tiny_bert_seq_cls(), surgery.LoraConfig(
        target_modules="all-linear", task_type="SEQ_CLS", r=4, rank_pattern={"value": 2}))
    text = p.table(fmt)
    for r in p.rewrites:
        assert r.path in text
    assert "classifier" in text and "modules_to_save" in text
    assert text.splitlines()[-1] == p.totals_line()
    assert p.totals_line().startswith("trainable params: ")
    if fmt == "markdown":
        assert any(line.startswith("| module") for line in text.splitlines())
        assert any(set(line) <= set("|-: ") and "---" in line for line in text.splitlines())
    assert str(p) == p.table()


def test_table_json_format_and_bad_format():
    p = surgery.plan(tm.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"]))
    assert json.loads(p.table("json")) == json.loads(p.to_json())
    with pytest.raises(ConfigError, match="html"):
        p.table("html")


def test_audit_shows_every_adapter_with_its_state():
    model = surgery_model(tm.tiny_llama(), target_modules=["q_proj"])
    model.add_adapter("other", surgery.LoraConfig(target_modules=["k_proj"]))
    text = model.audit()
    assert "[default: active]" in text and "[other: inactive]" in text
    assert "model.layers.1.self_attn.k_proj" in text
    model.merge_adapter()
    assert "[default: active, merged]" in model.audit()


# -- totals equal what PEFT prints ----------------------------------------------------------------------------
TOTALS = [
    (tm.tiny_llama, dict(target_modules=["q_proj", "v_proj"])),
    (tm.tiny_llama, dict(target_modules="all-linear", task_type="CAUSAL_LM", use_dora=True)),
    (lambda: tm.tiny_llama(attention_bias=True, mlp_bias=True), dict(target_modules="all-linear", bias="lora_only")),
    (lambda: tm.tiny_llama(attention_bias=True, mlp_bias=True), dict(target_modules=["q_proj"], bias="all")),
    (tm.tiny_llama, dict(target_modules=["q_proj", "v_proj"], rank_pattern={"q_proj": 2}, lora_bias=True)),
    (tm.tiny_llama, dict(target_modules=["embed_tokens", "q_proj"], modules_to_save=["lm_head"])),
    (lambda: tm.tiny_llama(tie_word_embeddings=True), dict(target_modules=["q_proj", "lm_head"])),
    (tm.tiny_gpt2, dict(target_modules=["c_attn", "wte"])),
    (tm.tiny_gpt2, dict(target_modules=["c_attn", "c_fc"], use_dora=True, layers_to_transform=[1])),
    (tm.tiny_bert_seq_cls, dict(target_modules=["query", "value"], task_type="SEQ_CLS")),
    (tm.tiny_bert_seq_cls, dict(target_modules="all-linear", task_type="SEQ_CLS", r=2)),
    (tm.tiny_bert_seq_cls, dict(target_modules=["query"], task_type="SEQ_CLS", bias="all")),  # classifier copy
    (tm.tiny_bert_qa, dict(target_modules=["query", "value"], task_type="QUESTION_ANS", r=16)),
    (tm.tiny_bert, dict(target_modules=["query", "value"], task_type="FEATURE_EXTRACTION", bias="all")),
    (tm.tiny_t5, dict(target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM")),
    (tm.tiny_convnet, dict(target_modules=["conv2d", "conv1d", "conv3d", "head"], lora_bias=True)),
    (tm.tiny_embed_mlp, dict(target_modules=["emb", "lin0"], modules_to_save=["lin1"])),
]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("builder, kwargs", TOTALS, ids=[str(i) for i in range(len(TOTALS))])
def test_totals_line_equals_peft_print_trainable_parameters(builder, kwargs):
    base = builder()
    expected = printed_line(peft_model(base, **kwargs))
    assert surgery.plan(base, surgery.LoraConfig(**kwargs)).totals_line() == expected
    model = surgery_model(base, **kwargs)
    assert printed_line(model) == expected
    assert model.plan().totals_line() == expected
    assert model.get_nb_trainable_parameters() == peft_model(base, **kwargs).get_nb_trainable_parameters()


def test_llama_2_7b_meta_totals_line_is_exact():
    model = load_model_for_planning("llama-2-7b")
    assert all(p.device.type == "meta" for p in model.parameters())
    p = surgery.plan(model, surgery.LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    assert p.totals_line() == "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622"


def _peft_line_on(model, **kwargs) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return printed_line(peft.get_peft_model(model, peft.LoraConfig(**kwargs)))


def test_reference_example_t5_base_seq2seq():
    """PEFT's LoRA example: t5-base, SEQ_2_SEQ_LM, q/v, r=8 (built from t5-base's config on the meta device)."""
    kwargs = dict(task_type="SEQ_2_SEQ_LM", inference_mode=False, r=8, lora_alpha=32, lora_dropout=0.1,
                  target_modules=["q", "v"])
    config = resolve_config("t5-base")
    with torch.device("meta"):
        ours_model = transformers.T5ForConditionalGeneration(config)
        peft_base = transformers.T5ForConditionalGeneration(copy.deepcopy(config))
    peft_line = _peft_line_on(peft_base, **kwargs)
    line = surgery.plan(ours_model, surgery.LoraConfig(**kwargs)).totals_line()
    assert line == peft_line
    assert line == "trainable params: 884,736 || all params: 223,788,288 || trainable%: 0.3953"
    assert printed_line(surgery.get_peft_model(ours_model, surgery.LoraConfig(**kwargs))) == line


def test_reference_example_bert_base_cased_question_answering():
    """PEFT's LoRA example: bert-base-cased, QUESTION_ANS, query/value, r=16 (qa_outputs trained in full)."""
    kwargs = dict(task_type="QUESTION_ANS", r=16, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"],
                  bias="none")
    ours_model = load_model_for_planning("bert-base-cased", task="QUESTION_ANS")
    peft_base = load_model_for_planning("bert-base-cased", task="QUESTION_ANS")
    assert type(ours_model).__name__ == "BertForQuestionAnswering"
    peft_line = _peft_line_on(peft_base, **kwargs)
    p = surgery.plan(ours_model, surgery.LoraConfig(**kwargs))
    assert p.totals_line() == peft_line
    assert p.totals_line().startswith("trainable params: 591,362 || all params: 108,312,580 || trainable%: ")
    assert [m.path for m in p.modules_to_save] == ["qa_outputs"]
    assert printed_line(surgery.get_peft_model(ours_model, surgery.LoraConfig(**kwargs))) == p.totals_line()


def test_a_regex_default_target_stays_one_regex(monkeypatch):
    """Some PEFT defaults are a regex string (gemma4's): it must not be split into characters."""
    from surgery.methods.lora import SPEC

    monkeypatch.setitem(SPEC.default_targets, "llama", r".*\.self_attn\.(q|v)_proj")
    p = surgery.plan(tm.tiny_llama(), surgery.LoraConfig(r=2))
    assert p.config["target_modules"] == r".*\.self_attn\.(q|v)_proj"
    assert len(p.rewrites) == 4 and all(r.path.endswith(("q_proj", "v_proj")) for r in p.rewrites)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("builder, kwargs, saved", [
    (tm.tiny_gpt2, dict(target_modules=["c_attn"]), True),                        # Conv1D: set to True
    (tm.tiny_llama, dict(target_modules=["q_proj"], fan_in_fan_out=True), False),   # Linear: set to False
])
def test_fan_in_fan_out_is_saved_as_peft_saves_it(builder, kwargs, saved):
    import peft

    for lib in (surgery, peft):
        model = lib.get_peft_model(builder(), lib.LoraConfig(**kwargs))
        assert model.peft_config["default"].fan_in_fan_out is saved, lib.__name__
    assert surgery.plan(builder(), surgery.LoraConfig(**kwargs)).config["fan_in_fan_out"] is saved
