"""Prefix tuning on encoders (BERT): the prefix injected at the attention modules, checked against an explicit
attention computation, for eager and SDPA attention, with and without padding, and for every BERT task."""
from __future__ import annotations

import math

import pytest
import torch

import surgery
from tests.support import tiny_models as tm
from tests.support.prompt_cases import P, inputs
from surgery.methods.prompt.forward import prefix_layers
from surgery.methods.prompt.inject import PrefixKV, widen_mask


def explicit_bert(bert, ids, mask, layers):
    """BERT's encoder written out, with [prefix_k; k] and [prefix_v; v] in every layer and the prefix always
    attended: scores = q k^T / sqrt(d) + [0 | mask], out = softmax(scores) v."""
    h = bert.embeddings(input_ids=ids)
    additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    additive = torch.cat([torch.zeros(*additive.shape[:-1], layers[0][0].shape[-2]), additive], dim=-1)
    for (prefix_k, prefix_v), layer in zip(layers, bert.encoder.layer):
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


def _prefix_bert(attn: str):
    base = tm.tiny_bert()
    base.set_attn_implementation(attn)
    config = surgery.PrefixTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=P)
    model = surgery.get_peft_model(base, config).eval()
    with torch.no_grad():
        model.prompt_encoder.default.embedding.weight.normal_(0, 1, generator=torch.Generator().manual_seed(3))
    return model


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("padded", [True, False])
def test_prefix_injection_equals_explicit_attention(attn, padded):
    model = _prefix_bert(attn)
    assert model.get_base_model().config._attn_implementation == attn
    ids = tm.token_batch()
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 5:] = 0
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = explicit_bert(model.get_base_model(), ids, mask, prefix_layers(model.prompt_encoder, "default", 2))
        with model.disable_adapter():
            plain = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert (ours - plain).abs().max() > 1e-2   # the prefix does change the output


def test_hooks_are_inert_outside_a_forward_and_removed_by_unload():
    model = _prefix_bert("sdpa")
    base = model.get_base_model()
    ids = tm.token_batch()
    with torch.no_grad():
        reference = tm.tiny_bert()(input_ids=ids).last_hidden_state
        torch.testing.assert_close(base(input_ids=ids).last_hidden_state, reference, atol=0, rtol=0)
    hooked = [m for m in base.modules() if m._forward_pre_hooks]
    assert len(hooked) == 2   # one per self-attention layer, nothing else
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


def test_gradients_reach_the_prefix_through_the_hooks():
    model = surgery.get_peft_model(tm.tiny_bert_seq_cls(),
                                   surgery.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=P))
    model.train()
    loss = model(**inputs("bert"), labels=torch.tensor([0, 2])).loss
    loss.backward()
    grad = model.prompt_encoder.default.embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


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
