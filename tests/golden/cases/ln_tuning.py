"""Golden cases of LN tuning (RMSNorm, LayerNorm with bias, T5's LayerNorm, a classification head, non-norm
targets: Linear and Conv2d, several adapters)."""
from __future__ import annotations

from .inputs import bert_inputs, conv_inputs, llama_inputs, t5_inputs, gpt2_inputs

# the copies start as the modules themselves (norm weights 1): multiplied by 1 + N(0, 0.1)
PERTURB = {"scale": ["ln_tuning_layers"], "replace": ["modules_to_save"]}

CASES: dict[str, dict] = {
    "llama_ln_tuning": dict(
        config="LNTuningConfig", builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM", adapters={"default": dict()},
        inputs=llama_inputs, output_keys=["logits"],
        notes="No target_modules: peft's llama default (input_layernorm, post_attention_layernorm, norm), saved "
              "as a list. Each LlamaRMSNorm gets a trainable copy (ln_tuning_layers.default.weight, saved as "
              "'...ln_tuning_layers.weight'); merge_and_unload puts the tuned copies in place.",
    ),
    "gpt2_ln_tuning": dict(
        config="LNTuningConfig", builder="tiny_gpt2", builder_kwargs={}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM", adapters={"default": dict()},
        inputs=gpt2_inputs, output_keys=["logits"],
        notes="peft's gpt2 default (ln_1, ln_2, ln_f): nn.LayerNorm with weight and bias; the biases start at 0 "
              "and the multiplicative perturbation keeps them 0 (only the weights move).",
    ),
    "t5_ln_tuning": dict(
        config="LNTuningConfig", builder="tiny_t5", builder_kwargs={}, task_type="SEQ_2_SEQ_LM",
        peft_model_class="PeftModelForSeq2SeqLM", adapters={"default": dict()},
        inputs=t5_inputs, output_keys=["logits"],
        notes="peft's t5 default (layer_norm, final_layer_norm): every T5LayerNorm of encoder and decoder.",
    ),
    "bert_ln_tuning_seq_cls": dict(
        config="LNTuningConfig", builder="tiny_bert_seq_cls", builder_kwargs={}, task_type="SEQ_CLS",
        peft_model_class="PeftModelForSequenceClassification",
        adapters={"default": dict(target_modules=["LayerNorm"])},
        inputs=bert_inputs, output_keys=["logits"],
        notes="bert has no peft default: target_modules=['LayerNorm'] (embeddings and both sublayers of each "
              "block). SEQ_CLS adds 'classifier' to modules_to_save; its copy is refilled with N(0, 0.1).",
    ),
    "llama_ln_tuning_linear": dict(
        config="LNTuningConfig", builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM", adapters={"default": dict(target_modules=["q_proj", "norm"])},
        inputs=llama_inputs, output_keys=["logits"],
        notes="A target that is not a norm: peft copies any module, so q_proj (Linear 32x32) trains in full as "
              "a copy next to the final norm (2 x 1024 + 32 trainable).",
    ),
    "conv_ln_tuning": dict(
        config="LNTuningConfig", builder="tiny_convnet", builder_kwargs={}, task_type=None,
        peft_model_class="PeftModel", adapters={"default": dict(target_modules=["conv2d", "head"])},
        inputs=conv_inputs, call="positional", output_keys=["logits"],
        notes="Copies of an nn.Conv2d and the Linear head of a plain module (no norms in it). Bare tensor "
              "output stored as 'logits'.",
    ),
    "multi_adapter_ln_tuning": dict(
        config="LNTuningConfig", builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(),
                  "other": dict(target_modules=["input_layernorm", "post_attention_layernorm", "norm"])},
        inputs=llama_inputs, output_keys=["logits"],
        notes="Two adapters on the same norms (peft's forward fails on a layer lacking the active adapter, so "
              "both target the same modules); 'other' saved at adapter/other/; '.merged' swaps in 'default'.",
    ),
}
