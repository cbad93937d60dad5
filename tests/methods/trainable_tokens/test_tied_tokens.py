"""Tied embeddings (tie_word_embeddings): the heads sharing the embedding's weight follow its rows, as in PEFT.

Against PEFT on tied Llama, GPT-2 and T5 (shared + encoder/decoder embed_tokens + lm_head): the same wrapped
modules, state-dict keys and printed totals; logits within 1e-5 and the delta's gradient within 1e-5 after a
causal-LM loss; merged weights equal and still one tensor; save/load both ways. PEFT cannot hold a second adapter
on a tied model (it nests the head's layer and every forward fails), so surgery's second adapter is checked
against PEFT holding that adapter alone.
"""
from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch

import surgery
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff, printed_line

TOKENS = [0, 7, 20, 51, 74, 118]
BUILDERS = {
    "llama": lambda: tm.tiny_llama(tie_word_embeddings=True),
    "gpt2": tm.tiny_gpt2,
    "t5": tm.tiny_t5,
}
TOL = 1e-5


def _inputs(name):
    ids = tm.token_batch()
    ids[:, 0] = torch.tensor([7, 118])
    return {"input_ids": ids, "decoder_input_ids": tm.token_batch(seed=2)} if name == "t5" else {"input_ids": ids}


def _pair(name, tokens=TOKENS, seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = surgery.get_peft_model(BUILDERS[name](), surgery.TrainableTokensConfig(token_indices=tokens))
        theirs = peft.get_peft_model(BUILDERS[name](), peft.TrainableTokensConfig(token_indices=tokens))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "trainable_tokens_delta" in n:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
        peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours))
    return ours, theirs


def _layers(model):
    return sorted(n for n, m in model.named_modules() if type(m).__name__ == "TrainableTokensLayer")


@pytest.mark.parametrize("name", BUILDERS)
def test_the_same_modules_keys_and_totals_as_peft(name):
    ours, theirs = _pair(name)
    assert _layers(ours) == _layers(theirs) and len(_layers(ours)) >= 2
    # (save_embedding_layers=False: the "auto" default differs on embed_tokens, see test_tokens_checkpoint.py)
    assert (sorted(surgery.get_peft_model_state_dict(ours, save_embedding_layers=False))
            == sorted(peft.get_peft_model_state_dict(theirs)))
    assert printed_line(ours) == printed_line(theirs)
    deltas = {id(m.trainable_tokens_delta["default"]) for n, m in ours.named_modules()
              if hasattr(m, "trainable_tokens_delta")}
    assert len(deltas) == 1   # one parameter, seen by every tied layer


@pytest.mark.parametrize("name", BUILDERS)
def test_logits_and_gradient_equal_peft(name):
    ours, theirs = _pair(name)
    inputs = _inputs(name)
    base = BUILDERS[name]()(**inputs).logits
    got, want = ours(**inputs).logits, theirs(**inputs).logits
    assert max_diff(got, want) <= TOL and max_diff(got, base) > 1e-3
    got.square().mean().backward()
    want.square().mean().backward()
    grads = [next(p.grad for n, p in m.named_parameters() if "trainable_tokens_delta" in n) for m in (ours, theirs)]
    assert grads[1].abs().max() > 0 and max_diff(*grads) <= TOL


@pytest.mark.parametrize("name", BUILDERS)
def test_merge_writes_the_shared_weight_once_as_peft(name):
    ours, theirs = _pair(name)
    inputs = _inputs(name)
    adapted = ours(**inputs).logits
    merged_ours = copy.deepcopy(ours).merge_and_unload()
    merged_theirs = copy.deepcopy(theirs).merge_and_unload()
    mine, their_state = merged_ours.state_dict(), merged_theirs.state_dict()
    assert set(mine) == set(their_state) and all(torch.equal(mine[k], their_state[k]) for k in mine)
    assert merged_ours.get_output_embeddings().weight is merged_ours.get_input_embeddings().weight   # still tied
    assert max_diff(merged_ours(**inputs).logits, adapted) <= 1e-4


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", BUILDERS)
def test_save_and_load_both_ways(name, tmp_path):
    ours, theirs = _pair(name)
    inputs = _inputs(name)
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    in_peft = peft.PeftModel.from_pretrained(BUILDERS[name](), str(tmp_path / "ours"))
    in_surgery = surgery.PeftModel.from_pretrained(BUILDERS[name](), str(tmp_path / "theirs"))
    assert max_diff(in_peft(**inputs).logits, ours(**inputs).logits) <= TOL
    assert max_diff(in_surgery(**inputs).logits, theirs(**inputs).logits) <= TOL
    assert _layers(in_surgery) == _layers(ours)


@pytest.mark.parametrize("name", ["gpt2", "t5"])
def test_a_second_adapter_equals_peft_holding_it_alone(name):
    ours, _ = _pair(name)
    ours.add_adapter("other", surgery.TrainableTokensConfig(token_indices=[3, 61, 92]))
    assert all(set(m.adapter_names()) == {"default", "other"} for n, m in ours.named_modules()
               if type(m).__name__ == "TrainableTokensLayer")
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if n.endswith("trainable_tokens_delta.other"):
                p.mul_(1.5)
    inputs = _inputs(name)
    default_out = ours(**inputs).logits
    ours.set_adapter("other")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = peft.get_peft_model(BUILDERS[name](), peft.TrainableTokensConfig(token_indices=[3, 61, 92]))
    peft.set_peft_model_state_dict(alone, surgery.get_peft_model_state_dict(ours, adapter_name="other"))
    assert max_diff(ours(**inputs).logits, alone(**inputs).logits) <= TOL
    ours.set_adapter("default")
    assert torch.equal(ours(**inputs).logits, default_out)


def test_deleting_adapters_unwraps_every_tied_layer():
    ours, _ = _pair("gpt2")
    ours.add_adapter("other", surgery.TrainableTokensConfig(token_indices=[3]))
    ours.delete_adapter("other")
    assert all(m.adapter_names() == ["default"] for n, m in ours.named_modules()
               if type(m).__name__ == "TrainableTokensLayer")
    assert not any("other" in k for k in ours.state_dict())
    model = ours.get_base_model()
    ours.add_adapter("third", surgery.TrainableTokensConfig(token_indices=[5]))
    ours.delete_adapter("default")
    ours.delete_adapter("third")
    assert _layers(ours) == []
    assert type(model.lm_head).__name__ == "Linear" and model.lm_head.weight is model.transformer.wte.weight


def test_a_tied_head_sees_the_new_rows():
    """Logit of token t = h . delta_t: the head's rows are the trained rows (not the base ones)."""
    ours, _ = _pair("gpt2")
    model = ours.get_base_model()
    h = torch.randn(1, 32)
    delta = model.transformer.wte.trainable_tokens_delta["default"]
    assert max_diff(model.lm_head(h)[0, TOKENS], (h @ delta.T)[0]) <= TOL
