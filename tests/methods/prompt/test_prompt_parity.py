"""Prompt learning vs real PEFT (test-only oracle): forward outputs per method x tiny model and task, and greedy
generate() with the KV cache on and off.

PEFT 0.21.2 cannot run prefix tuning on BERT task heads with transformers 5 ("Model does not support past key
values"); surgery's prefix there is checked against PEFT's backbone semantics in test_prompt_encoder_families.py
and against explicit attention math in test_prompt_prefix_attention.py.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from tests.support.prompt_cases import MODELS, P, greedy_reference, inputs, output_of, pair

peft = pytest.importorskip("peft")

ATOL = 1e-5
ALL_METHODS = ["prefix", "prefix_projection", "prompt", "ptuning_mlp", "ptuning_lstm"]
FORWARD_CASES = [(m, meth) for m in ("gpt2", "llama", "t5") for meth in ALL_METHODS] + [
    ("bert", "prompt"), ("bert", "ptuning_mlp"), ("bert", "ptuning_lstm"), ("bert_token", "prompt"),
    ("bert_qa", "ptuning_mlp"), ("bert_features", "prompt")]


def _run(model, kwargs):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return output_of(model(**kwargs))


@pytest.mark.parametrize("model,method", FORWARD_CASES)
def test_forward_equals_peft(model, method):
    pm, sm = pair(model, method)
    kwargs = inputs(model)
    ours, theirs = _run(sm, kwargs), _run(pm, kwargs)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


@pytest.mark.parametrize("model", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_causal_lm_loss_equals_peft(model, method):
    """Labels: -100 for the virtual tokens (prompt tuning), unchanged for prefix tuning, as PEFT."""
    pm, sm = pair(model, method)
    kwargs = {**inputs(model), "labels": inputs(model)["input_ids"]}
    with torch.no_grad():
        torch.testing.assert_close(sm(**kwargs).loss, pm(**kwargs).loss, atol=ATOL, rtol=0)


def test_output_sizes_follow_peft():
    """Prompt tuning outputs cover the virtual tokens too (as PEFT); prefix tuning outputs the user's tokens."""
    kwargs = inputs("gpt2")
    length = kwargs["input_ids"].shape[1]
    assert _run(pair("gpt2", "prompt")[1], kwargs).shape[1] == P + length
    assert _run(pair("gpt2", "prefix")[1], kwargs).shape[1] == length


def test_token_classification_labels_are_padded():
    """PEFT 0.21 fails here (logits cover P more tokens than the labels); surgery pads the labels with -100."""
    _, sm = pair("bert_token", "prompt")
    kwargs = inputs("bert_token")
    labels = torch.randint(0, 3, kwargs["input_ids"].shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = sm(**kwargs, labels=labels)
    logits = out.logits[:, P:]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 3), labels.reshape(-1))
    torch.testing.assert_close(out.loss, expected, atol=ATOL, rtol=0)


def test_question_answering_spans_move_with_the_prompt():
    """start/end positions index the user's tokens; surgery shifts them past the virtual tokens."""
    _, sm = pair("bert_qa", "prompt")
    kwargs = inputs("bert_qa")
    start, end = torch.tensor([1, 3]), torch.tensor([2, 5])
    with torch.no_grad():
        out = sm(**kwargs, start_positions=start, end_positions=end)
    ce = torch.nn.functional.cross_entropy
    expected = (ce(out.start_logits, start + P) + ce(out.end_logits, end + P)) / 2
    torch.testing.assert_close(out.loss, expected, atol=ATOL, rtol=0)


def test_token_type_ids_are_padded_for_classification():
    pm, sm = pair("bert", "prompt")
    kwargs = {**inputs("bert"), "token_type_ids": torch.ones_like(inputs("bert")["input_ids"])}
    torch.testing.assert_close(_run(sm, kwargs), _run(pm, kwargs), atol=ATOL, rtol=0)


# -- generate ----------------------------------------------------------------------------------------------
# PEFT 0.21.2's own generate() under transformers 5.24 is right only with the cache off, and not for prefix
# tuning on Llama or T5: it looks for `past_key_values` in the generation kwargs, which transformers 5 renamed
# `cache`, and those models hand back the used cache even with use_cache=False, so later steps reuse a stale
# one. The oracle is therefore a greedy loop over PEFT's forward; PEFT's generate(use_cache=False) is compared
# too where it is right.
GENERATE_CASES = [(m, meth) for m in ("gpt2", "llama", "t5") for meth in ("prefix", "prompt", "ptuning_mlp")]
PEFT_GENERATE_OK = {(m, meth) for m, meth in GENERATE_CASES if meth != "prefix" or m == "gpt2"}
STEPS = 6


@pytest.mark.parametrize("model,method", GENERATE_CASES)
def test_greedy_generate_equals_peft(model, method):
    pm, sm = pair(model, method, lively=True)
    kwargs = inputs(model)
    kwargs.pop("decoder_input_ids", None)
    enc_dec = MODELS[model][1] == "SEQ_2_SEQ_LM"
    reference = greedy_reference(pm, kwargs["input_ids"], kwargs["attention_mask"], STEPS, enc_dec)
    settings = dict(max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False)
    for use_cache in (True, False):
        ours = sm.generate(**kwargs, **settings, use_cache=use_cache)
        assert torch.equal(ours, reference), (use_cache, ours.tolist(), reference.tolist())
    if (model, method) in PEFT_GENERATE_OK:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = pm.generate(**kwargs, **settings, use_cache=False)
        assert torch.equal(theirs, reference)
    assert len(set(reference[:, -STEPS:].flatten().tolist())) > 2   # the case is not degenerate


def test_generate_restores_the_model():
    _, sm = pair("gpt2", "prefix")
    base = sm.get_base_model()
    sm.generate(**inputs("gpt2"), max_new_tokens=2, do_sample=False)
    assert "prepare_inputs_for_generation" not in base.__dict__
    with torch.no_grad():
        plain = base(**inputs("gpt2")).logits
        with sm.disable_adapter():
            disabled = sm(**inputs("gpt2")).logits
    torch.testing.assert_close(plain, disabled, atol=0, rtol=0)
