"""Prefix tuning on encoders, checked against an explicit attention computation for eager and SDPA attention,
with and without padding:

  cache route      BERT takes the prefix as a prefilled cache (through its backbone's hook for the task heads),
                   so the user's tokens take positions P.., as in PEFT's backbone call
  attention route  a custom model of BERT layers with no module taking a cache: hooks at every self-attention
                   module; the model keeps its own positions
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import surgery
from tests.support import tiny_models as tm
from tests.support.prompt_cases import P, inputs
from surgery.methods.prompt.forward import prefix_layers
from surgery.methods.prompt.inject import PrefixKV, widen_mask


def explicit_bert(embeddings, bert_layers, ids, mask, layers, start: int):
    """BERT's encoder written out, with [prefix_k; k] and [prefix_v; v] in every layer, the prefix always
    attended and the user's tokens at positions start..: scores = q k^T / sqrt(d) + [0 | mask]."""
    positions = torch.arange(start, start + ids.shape[1]).expand(ids.shape[0], -1)
    h = embeddings(input_ids=ids, position_ids=positions)
    additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    additive = torch.cat([torch.zeros(*additive.shape[:-1], layers[0][0].shape[-2]), additive], dim=-1)
    for (prefix_k, prefix_v), layer in zip(layers, bert_layers):
        att = layer.attention.self
        b, length, _ = h.shape
        heads, d = att.num_attention_heads, att.attention_head_size

        def split(x):
            return x.view(b, length, heads, d).transpose(1, 2)

        q = split(att.query(h))
        k = torch.cat([prefix_k, split(att.key(h))], dim=2)
        v = torch.cat([prefix_v, split(att.value(h))], dim=2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + additive, dim=-1)
        context = (probs @ v).transpose(1, 2).reshape(b, length, heads * d)
        attended = layer.attention.output(context, h)
        h = layer.output(layer.intermediate(attended), attended)
    return h


class BertLayersOnly(nn.Module):
    """BERT's embeddings and layers run by hand: no module holding every layer takes a cache."""

    def __init__(self, bert):
        super().__init__()
        self.config, self.embeddings, self.layers = bert.config, bert.embeddings, bert.encoder.layer

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def forward(self, input_ids, attention_mask):
        h = self.embeddings(input_ids=input_ids)
        additive = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.layers:
            h = layer(h, attention_mask=additive)
        return h


def _seeded_prefix(model):
    with torch.no_grad():
        model.prompt_encoder.default.embedding.weight.normal_(0, 1, generator=torch.Generator().manual_seed(3))
    return model.eval()


def _prefix_bert(attn: str, layers_only: bool = False):
    base = tm.tiny_bert()
    base.set_attn_implementation(attn)
    base = BertLayersOnly(base) if layers_only else base
    config = surgery.PrefixTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=P)
    return _seeded_prefix(surgery.get_peft_model(base, config))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("layers_only", [False, True])
def test_prefix_equals_explicit_attention(attn, padded, layers_only):
    model = _prefix_bert(attn, layers_only)
    route = model.prompt_encoder.sites["default"].route
    assert route == ("attention" if layers_only else "cache")
    assert model.get_base_model().config._attn_implementation == attn
    ids = tm.token_batch()
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 5:] = 0
    bert = model.get_base_model()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
        ours = out if layers_only else out.last_hidden_state
        expected = explicit_bert(bert.embeddings, bert.layers if layers_only else bert.encoder.layer, ids, mask,
                                 prefix_layers(model.prompt_encoder, "default", 2), start=0 if layers_only else P)
        with model.disable_adapter():
            plain = model(input_ids=ids, attention_mask=mask)
        plain = plain if layers_only else plain.last_hidden_state
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert (ours - plain).abs().max() > 1e-2   # the prefix does change the output


def _hooked(model):
    return [n for n, m in model.named_modules() if m._forward_pre_hooks]


@pytest.mark.parametrize("layers_only,hooked", [(False, ["bert"]),
                                                (True, ["layers.0.attention.self", "layers.1.attention.self"])])
def test_hooks_are_inert_outside_a_forward_and_removed_by_unload(layers_only, hooked):
    """The backbone hook (BERT task heads) or the attention hooks: only those modules, inert outside a forward."""
    base = BertLayersOnly(tm.tiny_bert()) if layers_only else tm.tiny_bert_seq_cls()
    reference = BertLayersOnly(tm.tiny_bert()) if layers_only else tm.tiny_bert_seq_cls()
    task = "FEATURE_EXTRACTION" if layers_only else "SEQ_CLS"
    model = surgery.get_peft_model(base, surgery.PrefixTuningConfig(task_type=task, num_virtual_tokens=P))
    ids = tm.token_batch()
    mask = torch.ones_like(ids)
    with torch.no_grad():
        got = model.get_base_model()(input_ids=ids, attention_mask=mask)
        want = reference(input_ids=ids, attention_mask=mask)
    got, want = (got, want) if layers_only else (got.logits, want.logits)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert [n for n in _hooked(model.get_base_model()) if "modules_to_save" not in n] == hooked
    unloaded = model.unload()
    assert not any(m._forward_pre_hooks for m in unloaded.modules())


@pytest.mark.parametrize("model_name", ["bert", "bert_token", "bert_qa"])
def test_prefix_tuning_runs_for_every_bert_task(model_name):
    from tests.support.prompt_cases import MODELS

    builder, task = MODELS[model_name]
    model = surgery.get_peft_model(builder(), surgery.PrefixTuningConfig(task_type=task, num_virtual_tokens=P))
    kwargs = inputs(model_name)
    out = model(**kwargs)
    logits = out.start_logits if task == "QUESTION_ANS" else out.logits
    expected = (2, 3) if task == "SEQ_CLS" else (2, kwargs["input_ids"].shape[1])   # the user's tokens only
    assert tuple(logits.shape[:2]) == expected


@pytest.mark.parametrize("layers_only", [False, True])
def test_gradients_reach_the_prefix_through_the_hooks(layers_only):
    base = BertLayersOnly(tm.tiny_bert()) if layers_only else tm.tiny_bert_seq_cls()
    task = "FEATURE_EXTRACTION" if layers_only else "SEQ_CLS"
    model = surgery.get_peft_model(base, surgery.PrefixTuningConfig(task_type=task, num_virtual_tokens=P))
    model.train()
    kwargs = inputs("bert")
    out = model(**kwargs) if layers_only else model(**kwargs, labels=torch.tensor([0, 2]))
    (out.sum() if layers_only else out.loss).backward()
    grad = model.prompt_encoder.default.embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_a_cache_given_to_the_backbone_is_refused():
    model = surgery.get_peft_model(tm.tiny_bert_seq_cls(),
                                   surgery.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=P))
    with pytest.raises(surgery.SurgeryError, match="do not pass one"):
        model(**inputs("bert"), cache=model.get_prompt(2))


def test_widen_mask_kinds():
    bool_mask = torch.tensor([[[[True, False]]]])
    assert widen_mask(bool_mask, 2).tolist() == [[[[True, True, True, False]]]]
    additive = torch.tensor([[[[0.0, -1e9]]]])
    assert widen_mask(additive, 1).tolist() == [[[[0.0, 0.0, -1e9]]]]
    assert widen_mask(torch.tensor([[1, 0]]), 1).tolist() == [[1, 1, 0]]
    assert widen_mask(None, 3) is None


def test_prefix_kv_refuses_a_shape_that_does_not_fit():
    cache = PrefixKV(torch.zeros(2, 4, P, 8), torch.zeros(2, 4, P, 8), "layer.0")
    k, v = cache.update(torch.ones(2, 4, 3, 8), torch.ones(2, 4, 3, 8), 0)
    assert k.shape == v.shape == (2, 4, P + 3, 8) and cache.get_seq_length() == P
    with pytest.raises(surgery.SurgeryError, match="layer.0"):
        cache.update(torch.ones(2, 2, 3, 16), torch.ones(2, 2, 3, 16), 0)
