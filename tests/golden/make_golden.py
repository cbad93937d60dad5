"""Write the golden fixtures under tests/golden/<case>/ with the REAL peft (a test-only oracle).

Run from the repository root:

    python tests/golden/make_golden.py            # all cases
    python tests/golden/make_golden.py llama_dora # some cases

Each case folder gets:
  adapter/          exactly what ``peft_model.save_pretrained(adapter/)`` wrote
  base.safetensors  the base model's state dict before peft touched it (tied weights saved as clones)
  io.safetensors    inputs + expected outputs (see peft_oracle.adapted_outputs for the key names)
  case.json         how to rebuild and run the case (see README.md)

After writing, every case is reloaded from disk with peft (peft_oracle.peft_outputs) and must reproduce
the stored outputs; adapted outputs must differ from the base model's by more than 1e-3.
"""
from __future__ import annotations

import contextlib
import io as _io
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

GOLDEN_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(GOLDEN_DIR.parent))  # tests/ -> `import tiny_models`, `import golden.peft_oracle`
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import peft  # noqa: E402
import tiny_models  # noqa: E402
from golden import peft_oracle  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

PERTURB_STD = 0.1


# ----------------------------------------------------------------------------------------------- inputs

def _llama_inputs():
    ids = tiny_models.token_batch(vocab=128, batch=2, seq=8, seed=1)
    return (
        {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
        {"input_ids": "tiny_models.token_batch(vocab=128, batch=2, seq=8, seed=1), int64 (2, 8)",
         "attention_mask": "all ones, int64 (2, 8)"},
    )


def _padded_mask(ids, lengths):
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return mask


def _bert_inputs():
    ids = tiny_models.token_batch(vocab=128, batch=2, seq=8, seed=1)
    mask = _padded_mask(ids, [8, 5])
    ids = ids.masked_fill(mask == 0, 0)  # pad_token_id 0
    return (
        {"input_ids": ids, "attention_mask": mask},
        {"input_ids": "token_batch(vocab=128, batch=2, seq=8, seed=1); row 1 right-padded with 0 after 5 tokens",
         "attention_mask": "int64 (2, 8): row 0 all ones, row 1 ones for the first 5 tokens"},
    )


def _t5_inputs():
    ids = tiny_models.token_batch(vocab=128, batch=2, seq=8, seed=1)
    mask = _padded_mask(ids, [8, 6])
    ids = ids.masked_fill(mask == 0, 0)
    dec = tiny_models.token_batch(vocab=128, batch=2, seq=5, seed=2)
    dec[:, 0] = 0  # decoder_start_token_id
    return (
        {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec},
        {"input_ids": "token_batch(vocab=128, batch=2, seq=8, seed=1); row 1 padded with 0 after 6 tokens",
         "attention_mask": "int64 (2, 8): row 0 all ones, row 1 ones for the first 6 tokens",
         "decoder_input_ids": "token_batch(vocab=128, batch=2, seq=5, seed=2) with column 0 set to 0 "
                              "(decoder_start_token_id)"},
    )


def _gpt2_inputs():
    ids = tiny_models.token_batch(vocab=128, batch=2, seq=8, seed=1)
    return (
        {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
        {"input_ids": "token_batch(vocab=128, batch=2, seq=8, seed=1), int64 (2, 8)",
         "attention_mask": "all ones, int64 (2, 8)"},
    )


def _conv_inputs():
    g = torch.Generator().manual_seed(3)
    return (
        {"pixel": torch.randn(2, 3, 8, 8, generator=g)},
        {"pixel": "torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)), float32; "
                  "passed positionally: model(pixel)"},
    )


def _embed_inputs():
    ids = tiny_models.token_batch(vocab=50, batch=2, seq=6, seed=1)
    ids[1, 4:] = 0  # padding_idx tokens
    return (
        {"input_ids": ids},
        {"input_ids": "token_batch(vocab=50, batch=2, seq=6, seed=1) with ids[1, 4:] = 0 (padding_idx), int64 (2, 6)"},
    )


# ------------------------------------------------------------------------------------------------ cases

LLAMA_QV = dict(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8)

CASES: dict[str, dict] = {
    "llama_lora_qv": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        adapters={"default": LLAMA_QV}, inputs=_llama_inputs, output_keys=["logits"],
        notes="Plain LoRA on q_proj/v_proj of both layers. Adapter weights perturbed with N(0, 0.1).",
    ),
    "llama_lora_all_linear_rslora_rank_pattern": dict(
        builder="tiny_llama", builder_kwargs={"attention_bias": True, "mlp_bias": True},
        task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(target_modules="all-linear", r=4, lora_alpha=16, use_rslora=True,
                                  rank_pattern={"mlp.down_proj": 2}, alpha_pattern={"o_proj": 4},
                                  bias="lora_only")},
        inputs=_llama_inputs, output_keys=["logits"],
        notes="all-linear (lm_head excluded by peft) in both layers; rsLoRA scaling alpha/sqrt(r): "
              "16/sqrt(4)=8 by default, down_proj r=2 -> 16/sqrt(2), o_proj alpha=4 -> 4/sqrt(4)=2. "
              "Llama built with attention_bias=True, mlp_bias=True so that bias='lora_only' is meaningful: "
              "the base biases of the 14 targeted Linear layers are trainable, perturbed (+N(0, 0.1)) and saved "
              "as '...<module>.base_layer.bias'. layers_to_transform is NOT here: peft 0.21.2 raises "
              "'`layers_to_transform` cannot be used when `target_modules` is a str.' (see "
              "llama_lora_layers_to_transform).",
    ),
    "llama_lora_layers_to_transform": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                  "down_proj"],
                                  r=4, lora_alpha=16, use_rslora=True, rank_pattern={"mlp.down_proj": 2},
                                  alpha_pattern={"o_proj": 4}, layers_to_transform=[1])},
        inputs=_llama_inputs, output_keys=["logits"],
        notes="Same settings as llama_lora_all_linear_rslora_rank_pattern but with the linear names spelled out "
              "(peft refuses layers_to_transform with a str target_modules), bias='none', and only layer 1 "
              "adapted (layers_to_transform=[1]; layer index found by peft's default layers pattern).",
    ),
    "llama_dora": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4, use_dora=True)},
        inputs=_llama_inputs, output_keys=["logits"],
        notes="DoRA (lora_alpha default 8, r=4). lora_A/lora_B perturbed with N(0, 0.1); the magnitude vectors "
              "(lora_magnitude_vector, initialised by peft to the weight column norms) are multiplied by "
              "(1 + N(0, 0.1)) so they stay realistic.",
    ),
    "gpt2_lora_conv1d": dict(
        builder="tiny_gpt2", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(target_modules=["c_attn", "c_proj", "wte"], r=4, fan_in_fan_out=True)},
        inputs=_gpt2_inputs, output_keys=["logits"],
        notes="GPT-2 Conv1D layers (fan_in_fan_out=True; 'c_proj' matches both attn.c_proj and mlp.c_proj) plus "
              "LoRA on the wte embedding (tied to lm_head in the base model; the LoRA delta only affects the "
              "input embedding lookup, lm_head keeps the base weight). peft 0.21.2 gives no tied-weight warning "
              "(its check only looks at names 'embed_tokens'/'lm_head'), but merge_and_unload() writes the wte "
              "delta into the weight shared with lm_head, so 'logits.merged' differs from 'logits' "
              "(merged_matches_adapted=false): that is peft's real behaviour, recorded as is.",
    ),
    "bert_seq_cls": dict(
        builder="tiny_bert_seq_cls", builder_kwargs={}, task_type="SEQ_CLS",
        peft_model_class="PeftModelForSequenceClassification",
        adapters={"default": dict(target_modules=["query", "value"], r=4)},
        inputs=_bert_inputs, output_keys=["logits"],
        notes="num_labels=3. peft adds 'classifier' to modules_to_save automatically; the trainable copy "
              "(classifier.modules_to_save.default.{weight,bias}) is refilled with N(0, 0.1) so it differs from "
              "the base classifier. peft 0.21.2 saves it as 'base_model.model.classifier.weight' / '.bias' "
              "(no 'modules_to_save' in the saved key).",
    ),
    "t5_seq2seq": dict(
        builder="tiny_t5", builder_kwargs={}, task_type="SEQ_2_SEQ_LM", peft_model_class="PeftModelForSeq2SeqLM",
        adapters={"default": dict(target_modules=["q", "v"], r=4)},
        inputs=_t5_inputs, output_keys=["logits"],
        notes="LoRA on q and v of encoder self-attn, decoder self-attn and decoder cross-attn.",
    ),
    "conv_lora": dict(
        builder="tiny_convnet", builder_kwargs={}, task_type=None, peft_model_class="PeftModel",
        adapters={"default": dict(target_modules=["conv2d", "conv2d_strided", "conv1d", "conv3d", "head"], r=2)},
        inputs=_conv_inputs, output_keys=["logits"],
        notes="Plain nn.Module, no task_type -> PeftModel. The model returns a bare tensor, stored as 'logits'. "
              "lora_alpha default 8 -> scaling 4.",
    ),
    "embedding_lora": dict(
        builder="tiny_embed_mlp", builder_kwargs={}, task_type=None, peft_model_class="PeftModel",
        adapters={"default": dict(target_modules=["emb", "lin0"], r=4)},
        inputs=_embed_inputs, output_keys=["logits"],
        notes="LoRA on nn.Embedding (lora_embedding_A/B, padding_idx=0) and a Linear. Bare tensor output "
              "stored as 'logits'.",
    ),
    "multi_adapter": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        adapters={"default": LLAMA_QV,
                  "other": dict(target_modules=["k_proj", "o_proj", "gate_proj"], r=2, lora_alpha=4)},
        inputs=_llama_inputs, output_keys=["logits"],
        notes="Two adapters saved by one save_pretrained call: 'default' at adapter/, 'other' at adapter/other/. "
              "'logits' == 'logits.default' (default active); 'logits.other' after set_adapter('other'); "
              "'logits.disabled' under disable_adapter() (== base); 'logits.merged' = merge_and_unload() of a "
              "deepcopy with 'default' active (the 'other' layers are unloaded unmerged).",
    ),
    "bert_bias_all": dict(
        builder="tiny_bert", builder_kwargs={}, task_type="FEATURE_EXTRACTION",
        peft_model_class="PeftModelForFeatureExtraction",
        adapters={"default": dict(target_modules=["query", "value"], r=4, bias="all")},
        inputs=_bert_inputs, output_keys=["last_hidden_state", "pooler_output"],
        notes="bias='all': every bias in the model (Linear and LayerNorm, incl. pooler) is trainable and saved; "
              "all of them are perturbed (+N(0, 0.1)) after get_peft_model. Note the biases live in the base "
              "model, so '.disabled' still uses the perturbed biases (peft does not restore them); "
              "'last_hidden_state.base' is the untouched base model.",
    ),
}


# ---------------------------------------------------------------------------------------------- helpers

class _ListHandler(logging.Handler):
    def __init__(self, records):
        super().__init__(level=logging.WARNING)
        self.records = records

    def emit(self, record):
        self.records.append(record)


def perturb(peft_model, seed: int) -> list[str]:
    """Make every adapter non-identity. Returns the names of the parameters that were changed."""
    torch.manual_seed(seed)
    changed = []
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + PERTURB_STD * torch.randn_like(p))
            elif "lora_" in name or "modules_to_save" in name:
                p.normal_(0, PERTURB_STD)
            elif p.requires_grad and (name == "bias" or name.endswith(".bias")):  # bias="all" / "lora_only"
                p.add_(PERTURB_STD * torch.randn_like(p))
            else:
                continue
            changed.append(name)
    return changed


def state_dict_for_save(model) -> dict[str, torch.Tensor]:
    # clone: tied weights share storage and safetensors refuses shared tensors
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def safetensors_keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return sorted(f.keys())


def make_case(name: str, spec: dict, seed: int = 0, perturb_seed: int = 1234) -> dict:
    case_dir = GOLDEN_DIR / name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    adapter_names = list(spec["adapters"])
    inputs, input_desc = spec["inputs"]()
    config_kwargs = {}
    for adapter, kw in spec["adapters"].items():
        kw = dict(kw)
        if spec["task_type"] is not None:
            kw["task_type"] = spec["task_type"]
        config_kwargs[adapter] = kw

    meta = {
        "builder": spec["builder"],
        "builder_kwargs": spec["builder_kwargs"],
        "seed": seed,
        "base_load": {"rebuild_with_builder": True, "load_state_dict": True, "strict": True,
                      "file": "base.safetensors"},
        "task_type": spec["task_type"],
        "peft_model_class": spec["peft_model_class"],
        "adapter_names": adapter_names,
        "adapter_subdirs": {a: ("" if i == 0 else a) for i, a in enumerate(adapter_names)},
        "lora_config_kwargs": config_kwargs,
        "inputs": {"names": list(inputs), "call": "positional" if name == "conv_lora" else "kwargs",
                   "description": input_desc},
        "output_keys": spec["output_keys"],
        "peft_version": peft.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "perturbation": {"seed": perturb_seed, "std": PERTURB_STD,
                         "rule": "torch.manual_seed(seed) once, then over peft_model.named_parameters() in order: "
                                 "'lora_magnitude_vector' *= 1+N(0,std); other names containing 'lora_' or "
                                 "'modules_to_save' := N(0,std); trainable biases (bias='all'/'lora_only') += "
                                 "N(0,std)"},
        "notes": spec["notes"],
    }

    # --- base model, untouched
    base = getattr(tiny_models, spec["builder"])(seed=seed, **spec["builder_kwargs"]).eval()
    save_file(state_dict_for_save(base), str(case_dir / "base.safetensors"))
    outputs = peft_oracle.forward(meta, base, inputs, suffix=".base")

    # --- peft model
    caught_stdout = _io.StringIO()
    log_records: list[logging.LogRecord] = []
    handler = _ListHandler(log_records)
    logging.getLogger().addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = adapter_names[0]
        model = get_peft_model(base, LoraConfig(**config_kwargs[first]), adapter_name=first)
        for adapter in adapter_names[1:]:
            model.add_adapter(adapter, LoraConfig(**config_kwargs[adapter]))
        model.set_adapter(first)
        changed = perturb(model, perturb_seed)
        with contextlib.redirect_stdout(caught_stdout):
            model.print_trainable_parameters()
        model.eval()
        outputs.update(peft_oracle.adapted_outputs(meta, model, inputs))
        model.save_pretrained(str(case_dir / "adapter"))
    logging.getLogger().removeHandler(handler)
    meta["trainable_line"] = caught_stdout.getvalue().strip()
    meta["perturbed_parameters"] = len(changed)
    meta["peft_warnings"] = sorted({str(w.message) for w in caught
                                    if not issubclass(w.category, (DeprecationWarning, FutureWarning))}
                                   | {f"[log {r.name}] {r.getMessage()}" for r in log_records})
    if type(model).__name__ != spec["peft_model_class"]:
        raise AssertionError(f"{name}: got {type(model).__name__}")

    # --- sanity: adapters are not the identity
    for key in spec["output_keys"]:
        keys = [key] + [f"{key}.{a}" for a in adapter_names if f"{key}.{a}" in outputs]
        for k in keys:
            diff = (outputs[k] - outputs[f"{key}.base"]).abs().max().item()
            if not diff > 1e-3:
                raise AssertionError(f"{name}: {k} differs from base by only {diff}")
    if all(kw.get("bias", "none") == "none" for kw in config_kwargs.values()):
        for key in spec["output_keys"]:  # disabling must give back the base model exactly
            torch.testing.assert_close(outputs[f"{key}.disabled"], outputs[f"{key}.base"], atol=1e-6, rtol=0)

    meta["merged_matches_adapted"] = all(
        torch.allclose(outputs[f"{k}.merged"], outputs[k], atol=1e-4, rtol=0) for k in spec["output_keys"])

    # --- write io + meta
    save_file({**{k: v.contiguous() for k, v in inputs.items()}, **outputs}, str(case_dir / "io.safetensors"))
    meta["output_tensors"] = sorted(outputs)
    meta["state_keys"] = safetensors_keys(case_dir / "adapter" / "adapter_model.safetensors")
    if len(adapter_names) > 1:
        meta["state_keys_by_adapter"] = {
            a: safetensors_keys(case_dir / "adapter" / sub / "adapter_model.safetensors")
            for a, sub in meta["adapter_subdirs"].items()}
    (case_dir / "case.json").write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")

    # --- self-check from disk with peft
    case = peft_oracle.load_case(case_dir)
    reloaded = peft_oracle.peft_outputs(case)
    reloaded.update(peft_oracle.base_outputs(case))
    assert sorted(reloaded) == sorted(case.expected), (sorted(reloaded), sorted(case.expected))
    for k, v in case.expected.items():
        torch.testing.assert_close(reloaded[k], v, atol=1e-6, rtol=0, msg=lambda m, k=k: f"{name} {k}: {m}")
    return meta


def main(argv: list[str]) -> None:
    names = argv or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s): {unknown}; known: {list(CASES)}")
    for name in names:
        meta = make_case(name, CASES[name])
        print(f"{name}: {meta['trainable_line']}")
        for w in meta["peft_warnings"]:
            print(f"    warning: {w}")


if __name__ == "__main__":
    # peft writes target_modules (a set) as a list in set-iteration order, which depends on the str hash
    # seed: pin it so that regenerating gives byte-identical adapter_config.json files.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    main(sys.argv[1:])
