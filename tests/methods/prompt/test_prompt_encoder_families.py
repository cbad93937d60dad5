"""Prompt learning on encoders and on models prefix tuning cannot reach, vs real PEFT (tiny in-process models).

  BERT / RoBERTa features   PEFT hands the prefix to the model as its cache: the user's tokens move to positions
                            P.. (the model does it) and token_type_ids are dropped; surgery equals it
  BERT / RoBERTa heads      PEFT 0.21.2 refuses under transformers 5 (its backbone check looks for
                            `past_key_values`); its fallback semantics (backbone with the prefix cache, then the
                            head) are the oracle
  DeBERTa, custom models    no attention module takes a cache: PEFT builds, saves and loads the adapter and fails
                            when it runs; surgery does the same, with a clear PlanError (a ValueError, as PEFT's)
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import transformers as tf
from torch import nn

import surgery
from surgery.errors import PlanError
from tests.support.prompt_cases import METHODS, P

peft = pytest.importorskip("peft")

ATOL = 1e-5
V = 128
_ENC = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)

MODELS = {
    "bert": lambda: tf.BertModel(tf.BertConfig(**_ENC)),
    "roberta": lambda: tf.RobertaModel(tf.RobertaConfig(max_position_embeddings=130, **_ENC)),
    "bert_cls": lambda: tf.BertForSequenceClassification(tf.BertConfig(num_labels=3, **_ENC)),
    "roberta_cls": lambda: tf.RobertaForSequenceClassification(
        tf.RobertaConfig(num_labels=3, max_position_embeddings=130, **_ENC)),
    "llama_cls": lambda: tf.LlamaForSequenceClassification(tf.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_labels=1, pad_token_id=0)),
    "bert_token": lambda: tf.BertForTokenClassification(tf.BertConfig(num_labels=3, **_ENC)),
    "deberta": lambda: tf.DebertaModel(tf.DebertaConfig(**_ENC)),
    "deberta_v2": lambda: tf.DebertaV2Model(tf.DebertaV2Config(**_ENC)),
    "deberta_v2_cls": lambda: tf.DebertaV2ForSequenceClassification(tf.DebertaV2Config(num_labels=3, **_ENC)),
}
TASKS = {"bert": "FEATURE_EXTRACTION", "roberta": "FEATURE_EXTRACTION", "deberta": "FEATURE_EXTRACTION",
         "deberta_v2": "FEATURE_EXTRACTION", "bert_token": "TOKEN_CLS"}


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return MODELS[name]().eval(), TASKS.get(name, "SEQ_CLS")


def pair(name: str, method: str):
    """(peft model, surgery model) on copies of one base, with PEFT's prompt (and head) weights copied."""
    base, task = build(name)
    cls_name, extra = METHODS[method]
    fields = dict(task_type=task, num_virtual_tokens=P, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(copy.deepcopy(base), getattr(peft, cls_name)(**fields))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in pm.prompt_encoder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    sm = surgery.get_peft_model(copy.deepcopy(base), getattr(surgery, cls_name)(**fields))
    sm.prompt_encoder.load_state_dict(pm.prompt_encoder.state_dict())
    return pm.eval(), sm.eval()


def inputs() -> dict:
    ids = torch.randint(3, V, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0   # right padding
    return {"input_ids": ids, "attention_mask": mask}


def run(model, **kwargs):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model(**kwargs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


# -- encoders that PEFT runs -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bert", "roberta"])
@pytest.mark.parametrize("method", ["prefix", "prefix_projection", "prompt", "ptuning_mlp"])
def test_feature_extraction_equals_peft(name, method):
    pm, sm = pair(name, method)
    torch.testing.assert_close(run(sm, **inputs()), run(pm, **inputs()), atol=ATOL, rtol=0)


def test_feature_extraction_prefix_drops_token_type_ids_as_peft():
    pm, sm = pair("bert", "prefix")
    kwargs = {**inputs(), "token_type_ids": torch.ones(2, 7, dtype=torch.long)}
    torch.testing.assert_close(run(sm, **kwargs), run(pm, **kwargs), atol=ATOL, rtol=0)
    torch.testing.assert_close(run(sm, **kwargs), run(sm, **inputs()), atol=0, rtol=0)


# -- encoder heads: PEFT's fallback semantics as the oracle --------------------------------------------------
def peft_fallback(pm, name: str, **kwargs):
    """PEFT's prefix forward for a head whose forward takes no cache: the backbone gets the prefix as its cache
    (mask widened by P), then the head runs on its output."""
    base = pm.get_base_model()
    backbone = getattr(base, pm.transformer_backbone_name)
    mask = torch.cat([torch.ones(2, P, dtype=torch.long), kwargs.pop("attention_mask")], dim=1)
    with torch.no_grad():
        out = backbone(attention_mask=mask, cache=pm.get_prompt(2), **kwargs)
        if name == "bert_token":
            return base.classifier(out[0])
        if name == "bert_cls":
            return base.classifier(out[1])
        return base.classifier(out[0])   # RoBERTa's head pools the first token itself


@pytest.mark.parametrize("name", ["bert_cls", "roberta_cls", "bert_token"])
@pytest.mark.parametrize("method", ["prefix", "prefix_projection"])
def test_encoder_heads_follow_peft_backbone_semantics(name, method):
    pm, sm = pair(name, method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="past key values"):   # PEFT 0.21.2 under transformers 5
            pm(**inputs())
    torch.testing.assert_close(run(sm, **inputs()), peft_fallback(pm, name, **inputs()), atol=ATOL, rtol=0)


def test_encoder_heads_keep_token_type_ids_as_peft():
    pm, sm = pair("bert_cls", "prefix")
    tt = torch.ones(2, 7, dtype=torch.long)
    ours = run(sm, **inputs(), token_type_ids=tt)
    torch.testing.assert_close(ours, peft_fallback(pm, "bert_cls", **inputs(), token_type_ids=tt), atol=ATOL, rtol=0)
    assert (ours - run(sm, **inputs())).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["bert_cls", "roberta_cls", "llama_cls"])
@pytest.mark.parametrize("method", ["prefix", "prompt", "ptuning_mlp"])
def test_sequence_classification_loss_is_the_task_loss(name, method):
    """PEFT's test_forward_with_labels: the loss of the prompted model is the plain task loss of its logits."""
    _, sm = pair(name, method)
    regression = name == "llama_cls"   # one label: MSE on float labels
    labels = torch.tensor([0.5, -0.5]) if regression else torch.tensor([0, 2])
    with torch.no_grad():
        out = sm(**inputs(), labels=labels)
    assert out.logits.shape == (2, 1 if regression else 3)
    expected = (torch.nn.functional.mse_loss(out.logits.squeeze(), labels) if regression
                else torch.nn.functional.cross_entropy(out.logits, labels))
    torch.testing.assert_close(out.loss, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["prefix", "prompt", "ptuning_mlp"])
def test_inputs_embeds_equal_input_ids(method):
    """PEFT's test_prompt_learning_forward_with_inputs_embeds."""
    _, sm = pair("bert_cls", method)
    kwargs = inputs()
    embeds = sm.get_input_embeddings()(kwargs.pop("input_ids"))
    torch.testing.assert_close(run(sm, inputs_embeds=embeds, **kwargs), run(sm, **inputs()), atol=ATOL, rtol=ATOL)


def test_encoder_prefix_checkpoints_move_both_ways(tmp_path):
    pm, sm = pair("roberta", "prefix")
    expected = run(pm, **inputs())
    pm.save_pretrained(str(tmp_path / "theirs"))
    ours = surgery.PeftModel.from_pretrained(build("roberta")[0], tmp_path / "theirs")
    torch.testing.assert_close(run(ours, **inputs()), expected, atol=ATOL, rtol=0)
    sm.save_pretrained(tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(build("roberta")[0], str(tmp_path / "ours"))
    torch.testing.assert_close(run(theirs.eval(), **inputs()), expected, atol=ATOL, rtol=0)


# -- DeBERTa: PEFT builds a prefix adapter but cannot run it ------------------------------------------------
@pytest.mark.parametrize("name", ["deberta", "deberta_v2", "deberta_v2_cls"])
def test_deberta_prefix_is_built_saved_and_loaded_but_refuses_to_run(name, tmp_path):
    pm, sm = pair(name, "prefix")
    ours_cfg, theirs_cfg = sm.peft_config["default"].to_dict(), pm.peft_config["default"].to_dict()
    # PEFT lists the classifier heads twice in modules_to_save (it adds them on each wrap)
    assert set(ours_cfg.pop("modules_to_save") or ()) == set(theirs_cfg.pop("modules_to_save") or ())
    assert ours_cfg == theirs_cfg
    theirs_sd = peft.get_peft_model_state_dict(pm)
    ours_sd = surgery.get_peft_model_state_dict(sm)
    assert sorted(ours_sd) == sorted(theirs_sd)
    assert all(torch.equal(ours_sd[k], theirs_sd[k]) for k in ours_sd)
    sm.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(build(name)[0], str(tmp_path))
    ours = surgery.PeftModel.from_pretrained(build(name)[0], tmp_path)
    for loaded in (theirs, ours):
        torch.testing.assert_close(loaded.prompt_encoder.default.embedding.weight,
                                   pm.prompt_encoder.default.embedding.weight, atol=0, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((ValueError, RuntimeError)):   # PEFT fails too (a ValueError for heads)
            pm(**inputs())
    with pytest.raises(PlanError, match="no attention module"):
        sm(**inputs())
    with pytest.raises(ValueError):   # a PlanError is a ValueError, as PEFT's refusal
        ours(**inputs())


@pytest.mark.parametrize("method", ["prompt", "ptuning_mlp", "ptuning_lstm"])
def test_deberta_prompt_tuning_equals_peft(method):
    for name in ("deberta", "deberta_v2_cls"):
        pm, sm = pair(name, method)
        torch.testing.assert_close(run(sm, **inputs()), run(pm, **inputs()), atol=ATOL, rtol=0)


# -- custom models (PEFT's test_initialization.py::TestLoadPeftKeyMapping) -----------------------------------
class FakeConfig(dict):
    """A dict-like config, as a transformers config looks to PEFT."""

    def __init__(self):
        super().__init__()
        self.vocab_size = 10

    def __getattr__(self, item):
        if item in self:
            return self[item]
        raise AttributeError(item)


class CustomLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = FakeConfig()
        self.device = "cpu"   # PEFT reads it
        self.model = nn.ModuleDict({"layers": nn.ModuleList([nn.Linear(10, 10) for _ in range(2)])})
        self.lm_head = nn.Linear(10, 10)

    def prepare_inputs_for_generation(self):
        return


@pytest.mark.parametrize("save_with,load_with", [("surgery", "surgery"), ("surgery", "peft"), ("peft", "surgery")])
def test_custom_model_prefix_saves_and_loads(save_with, load_with, tmp_path):
    libs = {"surgery": surgery, "peft": peft}
    saver, loader = libs[save_with], libs[load_with]
    config = saver.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, num_layers=2, token_dim=10,
                                      num_attention_heads=2)
    model = saver.get_peft_model(CustomLM(), config)
    model.prompt_encoder.default.embedding.weight.data.fill_(1.0)
    model.save_pretrained(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = loader.PeftModel.from_pretrained(CustomLM(), str(tmp_path))
    assert not any("missing adapter keys" in str(w.message) for w in caught)
    weight = loaded.prompt_encoder.default.embedding.weight
    assert weight.shape == (5, 2 * 2 * 10) and torch.equal(weight, torch.ones_like(weight))
    if loader is surgery:
        with pytest.raises(PlanError, match="CustomLM has no attention module"):
            loaded(input_ids=torch.tensor([[1, 2]]))
        with pytest.raises(PlanError, match="no attention module"):
            loaded.generate(input_ids=torch.tensor([[1, 2]]))
