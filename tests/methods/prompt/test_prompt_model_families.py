"""Prompt learning vs real PEFT on more model families than test_prompt_parity.py, each a tiny random model built
in-process: grouped-query attention with and without `head_dim` in the config (Qwen2, Qwen3, Mistral, Llama),
sliding-window attention (Gemma3), OPT, GPT-J and BART. Same base, same prompt weights; logits within 1e-5.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import transformers as tf

import surgery
from tests.support.prompt_cases import METHODS, P, greedy_reference

peft = pytest.importorskip("peft")

ATOL = 1e-5
V = 128
_LM = dict(vocab_size=V, intermediate_size=64, num_hidden_layers=2, tie_word_embeddings=False)

# name -> (config builder(init) , model class, task); `init` is the initializer range (larger for generate())
FAMILIES = {
    # GQA, no head_dim in the config: head_dim = hidden / query heads = 8, 2 kv heads (the reported bug)
    "qwen2": (lambda r: tf.Qwen2Config(hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
                                       initializer_range=r, **_LM), tf.Qwen2ForCausalLM, "CAUSAL_LM"),
    # GQA with a head_dim that is not hidden / heads
    "qwen3": (lambda r: tf.Qwen3Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                       initializer_range=r, **_LM), tf.Qwen3ForCausalLM, "CAUSAL_LM"),
    "llama_head_dim": (lambda r: tf.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=1,
                                                head_dim=12, initializer_range=r, **_LM),
                       tf.LlamaForCausalLM, "CAUSAL_LM"),
    "mistral": (lambda r: tf.MistralConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                           initializer_range=r, **_LM), tf.MistralForCausalLM, "CAUSAL_LM"),
    # sliding window shorter than the prefix, so the window cuts into it
    "gemma3": (lambda r: tf.Gemma3TextConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                             sliding_window=3, initializer_range=r, **_LM),
               tf.Gemma3ForCausalLM, "CAUSAL_LM"),
    "opt": (lambda r: tf.OPTConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                                   max_position_embeddings=128, word_embed_proj_dim=32, init_std=r),
            tf.OPTForCausalLM, "CAUSAL_LM"),
    "gptj": (lambda r: tf.GPTJConfig(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=128, rotary_dim=4,
                                     initializer_range=r, bos_token_id=1, eos_token_id=1),
             tf.GPTJForCausalLM, "CAUSAL_LM"),
    "bart": (lambda r: tf.BartConfig(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, init_std=r,
                                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                     decoder_ffn_dim=64, max_position_embeddings=128, forced_eos_token_id=None),
             tf.BartForConditionalGeneration, "SEQ_2_SEQ_LM"),
}
# layers of two shapes: 8-dim heads on sliding layers, 16-dim on full ones (`shared`: layers reusing others' keys)
FAMILIES["gemma4"] = (lambda r, shared=0: tf.Gemma4TextConfig(
    hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=8,
    layer_types=["sliding_attention", "full_attention"] * 2, per_layer_config={"01": {"head_dim": 16},
                                                                            "03": {"head_dim": 16}},
    vocab_size_per_layer_input=V, hidden_size_per_layer_input=8, num_kv_shared_layers=shared, initializer_range=r,
    **{**_LM, "num_hidden_layers": 4}), tf.Gemma4ForCausalLM, "CAUSAL_LM")
FAMILIES["gemma4_shared"] = (lambda r: FAMILIES["gemma4"][0](r, shared=2), tf.Gemma4ForCausalLM, "CAUSAL_LM")
GQA = ["qwen2", "qwen3", "llama_head_dim", "mistral"]
PREFIXES = ["prefix", "prefix_projection"]
ALL_METHODS = list(METHODS)


def build(name: str, init: float = 0.02, seed: int = 0):
    config_fn, cls, task = FAMILIES[name]
    torch.manual_seed(seed)
    return cls(config_fn(init)).eval(), task


def pair(name: str, method: str, init: float = 0.02):
    """(peft model, surgery model) on copies of one base, the prompt encoder weights copied from PEFT's."""
    base, task = build(name, init)
    cls_name, extra = METHODS[method]
    fields = dict(task_type=task, num_virtual_tokens=P, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(copy.deepcopy(base), getattr(peft, cls_name)(**fields))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in pm.prompt_encoder.parameters():   # a lively, reproducible prompt
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    sm = surgery.get_peft_model(copy.deepcopy(base), getattr(surgery, cls_name)(**fields))
    sm.prompt_encoder.load_state_dict(pm.prompt_encoder.state_dict())
    return pm.eval(), sm.eval()


def inputs(name: str) -> dict:
    ids = torch.randint(2, V, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    out = {"input_ids": ids, "attention_mask": mask}
    if FAMILIES[name][2] == "SEQ_2_SEQ_LM":
        mask[1, 5:] = 0     # encoder: right padding
        out["decoder_input_ids"] = torch.randint(2, V, (2, 4), generator=torch.Generator().manual_seed(2))
    else:
        mask[1, :2] = 0     # decoder: left padding
    return out


def logits(model, kwargs):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(**kwargs).logits


_ARCH = ("token_dim", "num_attention_heads", "num_layers", "encoder_hidden_size", "num_transformer_submodules")


@pytest.mark.parametrize("name", GQA + ["gemma4"])
def test_gqa_prefix_is_sized_as_peft_sizes_it(name):
    """The prefix is as wide as the keys (kv heads x head_dim), whether or not the config has head_dim."""
    pm, sm = pair(name, "prefix")
    theirs, ours = pm.peft_config["default"], sm.peft_config["default"]
    assert {k: getattr(ours, k) for k in _ARCH} == {k: getattr(theirs, k) for k in _ARCH}
    widest = max((m for m in sm.get_base_model().modules() if hasattr(m, "k_proj")), key=lambda m: m.head_dim)
    kv_heads = widest.k_proj.out_features // widest.head_dim
    assert (ours.num_attention_heads, ours.token_dim // ours.num_attention_heads) == (kv_heads, widest.head_dim)


def test_gemma4_layers_take_the_part_of_the_prefix_they_fit():
    """The prefix is sized for the 16-dim layers; the 8-dim layers take its first 8 dims, as in PEFT."""
    pm, sm = pair("gemma4", "prefix")
    ours, theirs = sm.get_prompt(2), pm.get_prompt(2)
    shapes = [tuple(layer.keys.shape) for layer in ours.layers]
    assert shapes == [(2, 2, P, 8), (2, 2, P, 16)] * 2
    for a, b in zip(ours.layers, theirs.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_gemma4_shared_kv_layers_are_skipped_with_a_warning():
    _, sm = pair("gemma4_shared", "prefix")
    with pytest.warns(UserWarning, match=r"skipped \[2, 3\] due to KV shape"):
        sm(**inputs("gemma4_shared"))


def test_gemma4_prefix_that_fits_no_layer_is_an_error():
    """As PEFT's test: keys wider than the prefix everywhere (the config changed after wrapping)."""
    _, sm = pair("gemma4", "prefix")
    sm.get_base_model().config.get_text_config().num_key_value_heads = 999
    with pytest.raises(ValueError, match="skipped every layer"):
        sm(**inputs("gemma4"))


# Gemma 4 reverses inputs_embeds into token ids for its per-layer inputs, so virtual tokens fail there (in PEFT too)
FORWARD = [(n, m) for n in FAMILIES for m in ALL_METHODS if m in PREFIXES or not n.startswith("gemma4")]


@pytest.mark.parametrize("name,method", FORWARD)
def test_forward_equals_peft(name, method):
    pm, sm = pair(name, method)
    kwargs = inputs(name)
    ours, theirs = logits(sm, kwargs), logits(pm, kwargs)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", GQA + ["gemma3", "gemma4"])
def test_gqa_prefix_loss_and_gradients(name):
    """Training works: the loss is PEFT's and the prefix gets gradients."""
    pm, sm = pair(name, "prefix")
    kwargs = {**inputs(name), "labels": inputs(name)["input_ids"]}
    sm.train()
    loss = sm(**kwargs).loss
    loss.backward()
    with torch.no_grad():
        torch.testing.assert_close(loss, pm(**kwargs).loss, atol=ATOL, rtol=0)
    assert sm.prompt_encoder.default.embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", GQA)
@pytest.mark.parametrize("method", PREFIXES)
def test_gqa_checkpoints_move_both_ways(name, method, tmp_path):
    pm, sm = pair(name, method)
    kwargs = inputs(name)
    expected = logits(pm, kwargs)
    pm.save_pretrained(str(tmp_path / "theirs"))
    ours = surgery.PeftModel.from_pretrained(build(name)[0], tmp_path / "theirs")
    torch.testing.assert_close(logits(ours, kwargs), expected, atol=ATOL, rtol=0)
    sm.save_pretrained(tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(build(name)[0], str(tmp_path / "ours")).eval()
    torch.testing.assert_close(logits(theirs, kwargs), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", GQA)
def test_gqa_get_prompt_matches_peft(name):
    pm, sm = pair(name, "prefix")
    theirs, ours = pm.get_prompt(3), sm.get_prompt(3)
    assert len(ours.layers) == len(theirs.layers) == 2
    for a, b in zip(ours.layers, theirs.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        assert a.keys.shape[:3] == (3, pm.peft_config["default"].num_attention_heads, P)


# -- generate: PEFT's own generate() is unreliable under transformers 5 (see test_prompt_parity.py), so the
# oracle is the greedy loop over PEFT's forward; OPT's generate with prompt tuning even fails in PEFT 0.21.2.
GENERATE = [("gemma4", "prefix"), ("gemma4_shared", "prefix"), ("qwen2", "prefix"), ("qwen2", "prompt"), ("qwen3", "prefix"), ("mistral", "prefix"), ("gemma3", "prefix"),
            ("gemma3", "prompt"), ("opt", "prompt"), ("opt", "ptuning_mlp"), ("gptj", "prefix"), ("bart", "prefix"),
            ("bart", "prompt")]
STEPS = 5


@pytest.mark.filterwarnings("ignore:prefix tuning")   # gemma4_shared: the skipped shared-KV layers
@pytest.mark.parametrize("name,method", GENERATE)
def test_greedy_generate_equals_peft_forward(name, method):
    pm, sm = pair(name, method, init=0.3)
    kwargs = inputs(name)
    kwargs.pop("decoder_input_ids", None)
    enc_dec = FAMILIES[name][2] == "SEQ_2_SEQ_LM"
    reference = greedy_reference(pm, kwargs["input_ids"], kwargs["attention_mask"], STEPS, enc_dec)
    settings = dict(max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False)
    for use_cache in (True, False):
        ours = sm.generate(**kwargs, **settings, use_cache=use_cache)
        assert torch.equal(ours, reference), (use_cache, ours.tolist(), reference.tolist())
