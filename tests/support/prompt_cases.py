"""Shared cases for the prompt-learning tests: tiny models x methods, PEFT/surgery pairs with equal weights,
and a step-by-step greedy reference built on PEFT's forward (the oracle for generate())."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import BertForTokenClassification

import surgery
from . import tiny_models as tm

P = 4  # virtual tokens in every case


def tiny_bert_token_cls(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return BertForTokenClassification(tm.bert_config(**overrides)).eval()


# name -> (builder, task_type)
MODELS = {
    "gpt2": (tm.tiny_gpt2, "CAUSAL_LM"),
    "llama": (tm.tiny_llama, "CAUSAL_LM"),
    "t5": (tm.tiny_t5, "SEQ_2_SEQ_LM"),
    "bert": (tm.tiny_bert_seq_cls, "SEQ_CLS"),
    "bert_token": (tiny_bert_token_cls, "TOKEN_CLS"),
    "bert_qa": (lambda: tm.tiny_bert_qa(num_labels=2), "QUESTION_ANS"),
    "bert_features": (tm.tiny_bert, "FEATURE_EXTRACTION"),
}
# Larger random weights for generate(), so greedy decoding does not repeat one token; not for comparing
# checkpoints (they amplify float rounding of the prompt encoder a thousandfold).
LIVELY = {"gpt2": dict(initializer_range=0.3), "llama": dict(initializer_range=0.3),
          "t5": dict(initializer_factor=3.0)}


# name -> (config class name, extra config fields)
METHODS = {
    "prefix": ("PrefixTuningConfig", {}),
    "prefix_projection": ("PrefixTuningConfig", {"prefix_projection": True, "encoder_hidden_size": 8}),
    "prompt": ("PromptTuningConfig", {}),
    "ptuning_mlp": ("PromptEncoderConfig", {"encoder_hidden_size": 16}),
    "ptuning_lstm": ("PromptEncoderConfig", {"encoder_hidden_size": 16, "encoder_reparameterization_type": "LSTM"}),
}


def configs(method: str, task: str, **overrides):
    import peft

    cls_name, extra = METHODS[method]
    fields = dict(task_type=task, num_virtual_tokens=P, **extra, **overrides)
    return getattr(peft, cls_name)(**fields), getattr(surgery, cls_name)(**fields)


def pair(model: str, method: str, lively: bool = False, **overrides):
    """(peft model, surgery model) on copies of one base, with the same prompt-encoder (and head) weights."""
    import peft

    builder, task = MODELS[model]
    base = builder(**LIVELY[model]) if lively else builder()
    peft_cfg, surgery_cfg = configs(method, task, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(copy.deepcopy(base), peft_cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in pm.prompt_encoder.parameters():   # a lively, reproducible prompt
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    sm = surgery.get_peft_model(copy.deepcopy(base), surgery_cfg)
    sm.prompt_encoder.load_state_dict(pm.prompt_encoder.state_dict())
    return pm.eval(), sm.eval()


def inputs(model: str, with_mask: bool = True) -> dict:
    ids = tm.token_batch()
    out = {"input_ids": ids}
    if with_mask:
        mask = torch.ones_like(ids)
        if MODELS[model][1] == "CAUSAL_LM":
            mask[1, :2] = 0     # decoders: left padding
        else:
            mask[1, 6:] = 0     # encoders: right padding
        out["attention_mask"] = mask
    if MODELS[model][1] == "SEQ_2_SEQ_LM":
        out["decoder_input_ids"] = tm.token_batch(seed=2)
    return out


def output_of(result) -> torch.Tensor:
    for key in ("logits", "start_logits", "last_hidden_state"):
        if getattr(result, key, None) is not None:
            return result[key]
    raise AssertionError(f"no output tensor in {type(result).__name__}")


def _eos_ids(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))


@torch.no_grad()
def greedy_reference(peft_model, ids: torch.Tensor, mask: torch.Tensor, steps: int, encoder_decoder: bool):
    """What greedy generate() must return: one full PEFT forward per new token (no KV cache), EOS suppressed
    (as min_new_tokens does), positions as generate() gives them (cumulative over the attention mask)."""
    base = peft_model.get_base_model()
    eos = _eos_ids(base)
    if encoder_decoder:
        out = torch.full((ids.shape[0], 1), base.config.decoder_start_token_id, dtype=torch.long)
    else:
        out, mask = ids.clone(), mask.clone()
    for _ in range(steps):
        if encoder_decoder:
            logits = peft_model(input_ids=ids, attention_mask=mask, decoder_input_ids=out).logits[:, -1]
        else:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                logits = peft_model(input_ids=out, attention_mask=mask, position_ids=positions).logits[:, -1]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits[:, eos] = float("-inf")
        out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=1)
    return out


WORDS = ["[UNK]", "classify", "the", "sentiment", "of", "this", "review"]


@pytest.fixture(scope="session")
def word_tokenizer(tmp_path_factory):
    """A local word-level tokenizer folder (no network): ids 1.. for WORDS[1:], no special tokens added."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("word_tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(str(path))
    return path
