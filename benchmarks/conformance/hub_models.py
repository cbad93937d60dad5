"""A local Hub cache for the model files of PEFT's suite: tiny random models under the ids the tests use.

The conformance run has no network. PEFT's tests load small models from the Hub by id
(`AutoModelForCausalLM.from_pretrained("peft-internal-testing/tiny-random-OPTForCausalLM")`); huggingface_hub
falls back to its local cache when a request fails, so this module builds that cache, laid out as huggingface_hub
lays it out (`models--<org>--<name>/refs/main` holding a commit hash, `snapshots/<hash>/<files>`), with tiny
random models built from transformers config objects (seeded), a small byte-level BPE tokenizer for each, and the
one small data set the model files load (`ybelkada/english_quotes_copy`, a `quote` column of made-up sentences).

The models follow what the tests expect of each id where they check it: the model type and architecture, the
number of layers (e.g. 5 for the tiny OPT, Bloom, GPT-2 and T5 models, 12 for `opt-125m`, 2 for the tiny Llama),
the module names (they come from the transformers class), a generation_config.json for causal LMs, one label for
the tiny Llama sequence classifier, and so on; `gpt2` and `bert-base-uncased` get tiny stand-ins too. They are
not the Hub's weights: tests that compare against recorded numbers cannot pass with them, nor can tests of
adapters hosted on the Hub (see HUB_ONLY).

Each repository's commit hash is derived from its spec, so `ensure_hub_cache()` is a few stat calls when the
cache is current and rebuilds exactly the repositories whose spec changed (a few seconds for all of them).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

HUB = Path(__file__).resolve().parents[2] / ".conformance" / "hub"
CACHE = HUB / "hub"
BUILD_VERSION = 1   # bump to rebuild every repository

# Ids the suite loads that are not built here: hosted adapters, and a diffusers pipeline.
HUB_ONLY = (
    "peft-internal-testing/tiny-OPTForCausalLM-lora",      # a LoRA adapter hosted on the Hub
    "peft-internal-testing/tiny-opt-lora-revision",        # a LoRA adapter with a `test` revision
    "peft-internal-testing/gpt2-lora-random",              # an adapter loaded through transformers' PEFT integration
    "ybelkada/test-st-lora",                               # a hosted adapter config
    "hf-internal-testing/tiny-sd-pipe",                    # a diffusers pipeline (not built here)
)

# ---------------------------------------------------------------------------------------------------------------
# Special-token layouts: tokens in id order (they take ids 0..n-1 of the tokenizer) and their roles.
# The model configs below point their bos/eos/pad ids at these ids.
# ---------------------------------------------------------------------------------------------------------------
_GPT2 = {"tokens": ["<|endoftext|>"],
         "roles": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}}
_ROBERTA = {"tokens": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
            "roles": {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                      "mask_token": "<mask>", "cls_token": "<s>", "sep_token": "</s>"},
            "template": ("<s>", "</s>")}
_OPT = {"tokens": ["<s>", "<pad>", "</s>", "<unk>"],
        "roles": {"bos_token": "</s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
        "prepend": "</s>"}
_BART = {**_ROBERTA}
_LLAMA = {"tokens": ["<unk>", "<s>", "</s>"],
          "roles": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}, "prepend": "<s>"}
_BLOOM = {"tokens": ["<unk>", "<s>", "</s>", "<pad>"],
          "roles": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}}
_QWEN = {"tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
         "roles": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}}
_GEMMA = {"tokens": ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"],
          "roles": {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>",
                    "mask_token": "<mask>"}, "prepend": "<bos>"}
_T5 = {"tokens": ["<pad>", "</s>", "<unk>"],
       "roles": {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}, "append": "</s>"}
_BERT = {"tokens": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
         "roles": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                   "mask_token": "[MASK]"}, "template": ("[CLS]", "[SEP]")}
_CLIP = {"tokens": ["<|startoftext|>", "<|endoftext|>"],
         "roles": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>"}, "template": ("<|startoftext|>", "<|endoftext|>")}

_V = 1024   # vocabulary size of most models (the tests use ids up to 1000)


def _spec(config: str, kwargs: dict, model: str, tokens: dict, refs=("main",), **extra) -> dict:
    return {"config": config, "kwargs": kwargs, "model": model, "tokens": tokens, "refs": list(refs), **extra}


def _opt(**kw):
    return {"vocab_size": _V, "hidden_size": 16, "word_embed_proj_dim": 16, "ffn_dim": 4, "num_hidden_layers": 5,
            "num_attention_heads": 4, "max_position_embeddings": 512, "pad_token_id": 1, "bos_token_id": 2,
            "eos_token_id": 2, **kw}


def _gpt2(**kw):
    return {"vocab_size": 1000, "n_positions": 512, "n_embd": 32, "n_layer": 5, "n_head": 4, "n_inner": 37,
            "bos_token_id": 0, "eos_token_id": 0, **kw}


def _llama(**kw):
    return {"vocab_size": _V, "hidden_size": 16, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None, **kw}


def _t5(**kw):
    return {"vocab_size": _V, "d_model": 32, "d_ff": 37, "d_kv": 8, "num_layers": 5, "num_decoder_layers": 5,
            "num_heads": 4, "relative_attention_num_buckets": 8, "pad_token_id": 0, "eos_token_id": 1,
            "decoder_start_token_id": 0, **kw}


def _bert(**kw):
    return {"vocab_size": _V, "hidden_size": 32, "num_hidden_layers": 5, "num_attention_heads": 4,
            "intermediate_size": 37, "max_position_embeddings": 512, "type_vocab_size": 16, "pad_token_id": 0, **kw}


def _roberta(**kw):
    return {**_bert(), "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "max_position_embeddings": 514,
            "type_vocab_size": 1, **kw}


def _clip_vision():
    return {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "image_size": 30, "patch_size": 2, "projection_dim": 32}


SPECS: dict[str, dict] = {
    # decoder models
    "peft-internal-testing/tiny-random-OPTForCausalLM": _spec("OPTConfig", _opt(), "OPTForCausalLM", _OPT),
    "peft-internal-testing/opt-125m": _spec(
        "OPTConfig", _opt(hidden_size=32, word_embed_proj_dim=32, ffn_dim=64, num_hidden_layers=12),
        "OPTForCausalLM", _OPT),
    "peft-internal-testing/tiny-random-GPT2LMHeadModel": _spec("GPT2Config", _gpt2(), "GPT2LMHeadModel", _GPT2),
    "hf-internal-testing/tiny-random-gpt2": _spec("GPT2Config", _gpt2(), "GPT2LMHeadModel", _GPT2),
    "peft-internal-testing/tiny-random-gpt2": _spec("GPT2Config", _gpt2(), "GPT2LMHeadModel", _GPT2),
    "gpt2": _spec("GPT2Config", _gpt2(n_layer=2, vocab_size=_V), "GPT2LMHeadModel", _GPT2),   # a tiny stand-in
    "peft-internal-testing/tiny-random-GPTJForCausalLM": _spec(
        "GPTJConfig", {"vocab_size": 1000, "n_positions": 512, "n_embd": 16, "n_layer": 5, "n_head": 2,
                       "rotary_dim": 4, "n_inner": None, "bos_token_id": 0, "eos_token_id": 0},
        "GPTJForCausalLM", _GPT2),
    # no GQA here: the weighted-combination tests mix adapters of q_proj and k_proj shapes
    "trl-internal-testing/tiny-random-LlamaForCausalLM": _spec(
        "LlamaConfig", _llama(num_key_value_heads=4), "LlamaForCausalLM", _LLAMA),
    "peft-internal-testing/tiny-random-LlamaForCausalLM": _spec(
        "LlamaConfig", _llama(hidden_size=32, intermediate_size=37, num_key_value_heads=4), "LlamaForCausalLM",
        _LLAMA),
    "hf-internal-testing/tiny-random-MistralForCausalLM": _spec(
        "MistralConfig", _llama(hidden_size=32, intermediate_size=37, sliding_window=4096), "MistralForCausalLM",
        _LLAMA),
    "peft-internal-testing/tiny-dummy-qwen2": _spec(
        # small (hidden 16, 2 heads sharing 1 KV head): the LoRA-conversion tests use rank 4 for it
        "Qwen2Config", {"vocab_size": _V, "hidden_size": 16, "intermediate_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512,
                        "eos_token_id": 0, "pad_token_id": 0, "bos_token_id": None, "tie_word_embeddings": True},
        "Qwen2ForCausalLM", _QWEN),
    "trl-internal-testing/tiny-Qwen3ForCausalLM": _spec(
        "Qwen3Config", {"vocab_size": _V, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                        "max_position_embeddings": 512, "eos_token_id": 0, "pad_token_id": 0, "bos_token_id": None,
                        "tie_word_embeddings": True},
        "Qwen3ForCausalLM", _QWEN),
    "hf-internal-testing/tiny-random-Gemma3ForCausalLM": _spec(
        "Gemma3TextConfig", {"vocab_size": _V, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                             "max_position_embeddings": 512, "sliding_window": 16, "pad_token_id": 0,
                             "eos_token_id": 1, "bos_token_id": 2},
        "Gemma3ForCausalLM", _GEMMA),
    "peft-internal-testing/tiny-random-gemma4-E2B": _spec(
        # like Gemma 4 E2B: sliding and full attention layers with different head dims, the last layers sharing KV
        "Gemma4TextConfig", {"vocab_size": _V, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
                             "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 8,
                             "global_head_dim": 16, "max_position_embeddings": 512, "sliding_window": 16,
                             "layer_types": ["sliding_attention", "full_attention", "sliding_attention",
                                             "full_attention"],
                             "num_kv_shared_layers": 2, "vocab_size_per_layer_input": _V,
                             "hidden_size_per_layer_input": 8, "pad_token_id": 0, "eos_token_id": 1,
                             "bos_token_id": 2},
        "Gemma4ForCausalLM", _GEMMA),
    "trl-internal-testing/tiny-Llama4ForCausalLM": _spec(
        "Llama4TextConfig", {"vocab_size": _V, "hidden_size": 32, "intermediate_size": 32,
                             "intermediate_size_mlp": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                             "num_key_value_heads": 2, "head_dim": 8, "num_local_experts": 2,
                             "num_experts_per_tok": 1, "max_position_embeddings": 512, "attention_chunk_size": 512,
                             "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None},
        "Llama4ForCausalLM", _LLAMA),
    "trl-internal-testing/tiny-GptOssForCausalLM": _spec(
        "GptOssConfig", {"vocab_size": _V, "hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "num_local_experts": 4,
                         "num_experts_per_tok": 2, "sliding_window": 16, "max_position_embeddings": 512,
                         "eos_token_id": 0, "pad_token_id": 0},
        "GptOssForCausalLM", _QWEN),
    "peft-internal-testing/tiny-random-BloomForCausalLM": _spec(
        "BloomConfig", {"vocab_size": _V, "hidden_size": 32, "n_layer": 5, "n_head": 4, "bos_token_id": 1,
                        "eos_token_id": 2, "pad_token_id": 3},
        "BloomForCausalLM", _BLOOM),
    "peft-internal-testing/tiny-random-GPTNeoXForCausalLM": _spec(
        "GPTNeoXConfig", {"vocab_size": _V, "hidden_size": 32, "num_hidden_layers": 5, "num_attention_heads": 4,
                          "intermediate_size": 37, "max_position_embeddings": 512, "bos_token_id": 0,
                          "eos_token_id": 0},
        "GPTNeoXForCausalLM", _GPT2),
    "trl-internal-testing/tiny-NemotronHForCausalLM-nano": _spec(
        "NemotronHConfig", {"vocab_size": _V, "hidden_size": 32, "layers_block_type":
                            ["linear_attention", "full_attention", "moe", "mlp"],
                            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                            "intermediate_size": 64, "use_mamba_kernels": False, "ssm_state_size": 8,
                            "mamba_num_heads": 4, "mamba_head_dim": 16, "n_groups": 1, "chunk_size": 16,
                            "n_routed_experts": 2, "n_shared_experts": 1, "moe_intermediate_size": 32,
                            "moe_shared_expert_intermediate_size": 32, "num_experts_per_tok": 1,
                            "max_position_embeddings": 512, "pad_token_id": 0, "bos_token_id": 1,
                            "eos_token_id": 2},
        "NemotronHForCausalLM", _BLOOM),
    "tiiuae/falcon-mamba-tiny-dev": _spec(
        "FalconMambaConfig", {"vocab_size": _V, "hidden_size": 32, "state_size": 8, "num_hidden_layers": 2,
                              "expand": 2, "conv_kernel": 4, "time_step_rank": 4, "pad_token_id": 0,
                              "bos_token_id": 1, "eos_token_id": 2},
        "FalconMambaForCausalLM", _LLAMA),
    "hf-internal-testing/tiny-random-LlavaForConditionalGeneration": _spec(
        "LlavaConfig", {"vision_config": _clip_vision(),
                        "text_config": {"model_type": "llama", **_llama(hidden_size=32, intermediate_size=37)},
                        "image_token_index": 1000, "image_seq_length": 225},
        "LlavaForConditionalGeneration", _LLAMA),
    # encoder-decoder models
    "peft-internal-testing/tiny-random-BartForConditionalGeneration": _spec(
        "BartConfig", {"vocab_size": _V, "d_model": 16, "encoder_layers": 2, "decoder_layers": 2,
                       "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 4,
                       "decoder_ffn_dim": 4, "max_position_embeddings": 512, "pad_token_id": 1, "bos_token_id": 0,
                       "eos_token_id": 2, "decoder_start_token_id": 2, "forced_eos_token_id": 2},
        "BartForConditionalGeneration", _BART),
    "peft-internal-testing/tiny-random-T5ForConditionalGeneration": _spec(
        "T5Config", _t5(), "T5ForConditionalGeneration", _T5),
    "peft-internal-testing/tiny-random-T5ForConditionalGeneration-calibrated": _spec(
        "T5Config", _t5(), "T5ForConditionalGeneration", _T5),
    "peft-internal-testing/tiny-random-t5": _spec("T5Config", _t5(), "T5ForConditionalGeneration", _T5),
    "google/flan-t5-small": _spec(
        "T5Config", _t5(num_layers=2, num_decoder_layers=2, d_ff=64, feed_forward_proj="gated-gelu",
                        tie_word_embeddings=False),
        "T5ForConditionalGeneration", _T5),
    # encoders
    "peft-internal-testing/tiny-random-BertModel": _spec(
        "BertConfig", _bert(), "BertModel", _BERT, refs=("main", "v2.0.0")),
    "bert-base-uncased": _spec("BertConfig", _bert(num_hidden_layers=2), "BertForMaskedLM", _BERT),  # a tiny stand-in
    "peft-internal-testing/tiny-random-RobertaModel": _spec("RobertaConfig", _roberta(), "RobertaModel", _ROBERTA),
    "peft-internal-testing/tiny-random-DebertaModel": _spec(
        "DebertaConfig", _bert(type_vocab_size=0), "DebertaModel", _BERT),
    "peft-internal-testing/tiny-random-DebertaV2Model": _spec(
        "DebertaV2Config", _bert(type_vocab_size=0), "DebertaV2Model", _BERT),
    "peft-internal-testing/tiny-random-BertForSequenceClassification": _spec(
        "BertConfig", _bert(num_labels=2), "BertForSequenceClassification", _BERT),
    "peft-internal-testing/tiny-random-RobertaForSequenceClassification": _spec(
        "RobertaConfig", _roberta(num_labels=2), "RobertaForSequenceClassification", _ROBERTA),
    "trl-internal-testing/tiny-LlamaForSequenceClassification-3.2": _spec(
        # its head has a single output (the tests then treat it as a regression)
        "LlamaConfig", _llama(hidden_size=32, num_labels=1, tie_word_embeddings=True, bos_token_id=1,
                              eos_token_id=2),
        "LlamaForSequenceClassification", _LLAMA),
    "peft-internal-testing/tiny-clip-text-2": _spec(
        "CLIPTextConfig", {"vocab_size": _V, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "max_position_embeddings": 77, "projection_dim": 32,
                           "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        "CLIPTextModelWithProjection", _CLIP),
}

# Data sets the model files load (load_dataset("ybelkada/english_quotes_copy") in test_decoder_models.py).
DATASETS: dict[str, dict] = {
    "ybelkada/english_quotes_copy": {"kind": "quotes", "rows": 64, "seed": 0},
}


# ---------------------------------------------------------------------------------------------------------------
# The cache layout
# ---------------------------------------------------------------------------------------------------------------
def _commit(repo_id: str, spec: dict) -> str:
    text = json.dumps({"repo": repo_id, "spec": spec, "version": BUILD_VERSION}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


def _repo_dir(repo_id: str, repo_type: str = "model") -> Path:
    return CACHE / f"{repo_type}s--{repo_id.replace('/', '--')}"


def _is_current(repo_id: str, spec: dict, repo_type: str = "model") -> bool:
    folder, commit = _repo_dir(repo_id, repo_type), _commit(repo_id, spec)
    refs = spec.get("refs", ["main"])
    try:
        return (all((folder / "refs" / ref).read_text().strip() == commit for ref in refs)
                and (folder / "snapshots" / commit / ".complete").exists())
    except OSError:
        return False


def _install(repo_id: str, spec: dict, write, repo_type: str = "model") -> None:
    """Write a snapshot with write(folder) into a temporary folder, then move it into place and point the refs
    at it; an interrupted build leaves nothing that looks complete."""
    folder, commit = _repo_dir(repo_id, repo_type), _commit(repo_id, spec)
    snapshots = folder / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)
    target = snapshots / commit
    if not (target / ".complete").exists():
        tmp = snapshots / f".tmp-{commit}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write(tmp)
        (tmp / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    for old in snapshots.iterdir():   # snapshots of earlier specs
        if old.name != commit and not old.name.startswith(".tmp-"):
            shutil.rmtree(old, ignore_errors=True)
    (folder / "refs").mkdir(exist_ok=True)
    for ref in spec.get("refs", ["main"]):
        ref_file = folder / "refs" / ref
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        tmp_ref = ref_file.with_name(f".{ref_file.name}.{os.getpid()}")
        tmp_ref.write_text(commit)
        os.replace(tmp_ref, ref_file)


def _arrow_dir(repo_id: str, spec: dict) -> Path:
    """Where `datasets` looks for a data set it loaded before, which is all it does offline."""
    namespace, name = repo_id.split("/")
    return HUB / "datasets" / f"{namespace}___{name}" / "default" / "0.0.0" / _commit(repo_id, spec)


def missing() -> list[str]:
    """The repositories (models and data sets) whose snapshot is absent or out of date."""
    out = [r for r, s in SPECS.items() if not _is_current(r, s)]
    return out + [r for r, s in DATASETS.items()
                  if not (_is_current(r, s, "dataset") and (_arrow_dir(r, s) / "dataset_info.json").exists())]


def ensure_hub_cache(verbose: bool = False) -> list[str]:
    """Build what is missing from the local Hub cache; returns the ids built (empty when it was current)."""
    todo = missing()
    if not todo:
        return []
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        for repo_id in todo:
            if repo_id in SPECS:
                spec = SPECS[repo_id]
                _install(repo_id, spec, lambda folder, r=repo_id, s=spec: _write_model(r, s, folder))
            else:
                spec = DATASETS[repo_id]
                _install(repo_id, spec, lambda folder, r=repo_id, s=spec: _write_dataset(r, s, folder), "dataset")
                _prepare_dataset(repo_id, spec)
            if verbose:
                print(f"built {repo_id}", flush=True)
    return todo


def hub_env() -> dict[str, str]:
    ensure_hub_cache()
    return {"HF_HOME": str(HUB), "HF_HUB_CACHE": str(CACHE)}


# ---------------------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------------------
def _seed(repo_id: str) -> int:
    return int(hashlib.sha1(repo_id.encode()).hexdigest()[:8], 16)


def _write_model(repo_id: str, spec: dict, folder: Path) -> None:
    import torch
    import transformers

    config = getattr(transformers, spec["config"])(**spec["kwargs"])
    config.architectures = [spec["model"]]
    model_cls = getattr(transformers, spec["model"])
    torch.manual_seed(_seed(repo_id))
    model = model_cls(config).eval()
    model.save_pretrained(folder)
    _write_tokenizer(spec, config, folder)


def _vocab_size(config) -> int:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text_config.vocab_size)


def _write_tokenizer(spec: dict, config, folder: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    layout = spec["tokens"]
    tok = _bpe_tokenizer(min(_vocab_size(config), 1000), layout)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **layout["roles"])
    fast.save_pretrained(folder)


_WORDS = None


def _corpus(seed: int = 0) -> list[str]:
    """Made-up English-like sentences: common words plus seeded pseudo-words."""
    import random

    global _WORDS
    rng = random.Random(seed)
    common = ("the of and to a in is it you that he was for on are with as I his they be at one have this from or "  # noqa: SIM905
              "had by not word but what some we can out other were all there when up use your how said an each she "
              "which do their time if will way about many then them write would like so these her long make thing "
              "see him two has look more day could go come did number sound no most people my over know water than "
              "call first who may down side been now find any new work part take get place made live where after "
              "back little only round man year came show every good me give our under name very through just form "
              "sentence great think say help low line differ turn cause much mean before move right boy old too "
              "same tell does set three want air well also play small end put home read hand port large spell add "
              "even land here must big high such follow act why ask men change went light kind off need house "
              "picture try us again animal point mother world near build self earth father test prompt").split()
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "ba", "do", "fe", "gu", "hi", "ja", "ko",
                 "li", "mu", "no", "pe", "qu", "ra", "si", "tu", "we", "xa", "yo", "zi", "ch", "st", "th", "er"]
    if _WORDS is None:
        _WORDS = common + ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(1500)]
    lines = []
    for _ in range(4000):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice([".", ".", "!", "?", ","]) + rng.choice(["", " 1999", " (ok)"]))
    return lines


_TOKENIZERS: dict = {}


def _bpe_tokenizer(vocab_size: int, layout: dict):
    """A byte-level BPE tokenizer (any text encodes) with the layout's special tokens at ids 0..n-1."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    key = (vocab_size, json.dumps(layout, sort_keys=True))
    if key in _TOKENIZERS:
        return Tokenizer.from_str(_TOKENIZERS[key])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(layout["tokens"]), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    for i, token in enumerate(layout["tokens"]):
        assert tok.token_to_id(token) == i, (token, tok.token_to_id(token))
    template = layout.get("template")
    prepend, append = layout.get("prepend"), layout.get("append")
    if template:
        first, last = template
        tok.post_processor = processors.TemplateProcessing(
            single=f"{first} $A {last}", pair=f"{first} $A {last} {last} $B {last}",
            special_tokens=[(first, tok.token_to_id(first)), (last, tok.token_to_id(last))])
    elif prepend or append:
        parts = ([prepend] if prepend else []) + ["$A"] + ([append] if append else [])
        specials = {t: tok.token_to_id(t) for t in (prepend, append) if t}
        tok.post_processor = processors.TemplateProcessing(
            single=" ".join(parts), pair=" ".join(parts + [p.replace("$A", "$B") for p in parts if p != prepend]),
            special_tokens=list(specials.items()))
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    _TOKENIZERS[key] = tok.to_str()
    return tok


def _write_dataset(repo_id: str, spec: dict, folder: Path) -> None:
    """A data set repository as the Hub serves one: a parquet file per split under data/."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(spec["seed"])
    lines = _corpus(spec["seed"] + 1)
    rows = [rng.choice(lines) for _ in range(spec["rows"])]
    table = pa.table({"quote": [f"\u201c{r}\u201d" for r in rows],
                      "author": [rng.choice(["Anonymous", "A. Writer", "B. Poet"]) for _ in rows],
                      "tags": [[rng.choice(["life", "love", "work"])] for _ in rows]})
    (folder / "data").mkdir()
    pq.write_table(table, folder / "data" / "train-00000-of-00001.parquet")
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                      "    path: data/train-*\n---\n# A made-up stand-in for the conformance run\n")


def _prepare_dataset(repo_id: str, spec: dict) -> None:
    """The data set as `datasets` caches it after a first load: Arrow files and dataset_info.json."""
    import datasets
    from datasets.packaged_modules.parquet.parquet import Parquet

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    target = _arrow_dir(repo_id, spec)
    snapshot = _repo_dir(repo_id, "dataset") / "snapshots" / _commit(repo_id, spec)
    build = HUB / "datasets" / f".tmp-build-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    name = repo_id.split("/")[1]
    builder = Parquet(cache_dir=str(build), dataset_name=name, config_name="default", hash=_commit(repo_id, spec),
                      data_files={"train": [str(p) for p in sorted((snapshot / "data").glob("train-*.parquet"))]})
    builder.download_and_prepare()
    shutil.rmtree(target.parent.parent, ignore_errors=True)   # earlier versions of the data set
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(builder.cache_dir, target)
    shutil.rmtree(build, ignore_errors=True)


if __name__ == "__main__":
    import sys
    import time

    if "--rebuild" in sys.argv:
        shutil.rmtree(CACHE, ignore_errors=True)
    start = time.perf_counter()
    built = ensure_hub_cache(verbose=True)
    print(f"{len(built)} repositories built in {time.perf_counter() - start:.1f}s; cache at {CACHE}")
