"""Golden cases of LoHa (nn.Linear, nn.Conv1d/Conv2d flat and CP, patterns, a task head, several adapters)."""
from __future__ import annotations

from .inputs import bert_inputs, conv_inputs, llama_inputs, t5_inputs

# every LoHa factor starts at kaiming or 0 (hada_w2_b): all replaced by N(0, 0.1)
PERTURB = {"replace": ["hada_", "modules_to_save"]}

LLAMA = dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4, alpha=16)

CASES: dict[str, dict] = {
    "llama_loha_linear": dict(
        config="LoHaConfig", builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(LLAMA, rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 4},
                                  rank_dropout=0.1, module_dropout=0.1)},
        inputs=llama_inputs, output_keys=["logits"],
        notes="LoHa on torch Linear layers of both layers: q_proj r=4 alpha=16 (scaling 4), v_proj alpha=4 "
              "(scaling 1), down_proj r=2 (scaling 8). hada_w1_a/w2_a (out, r), hada_w1_b/w2_b (r, in), all "
              "replaced by N(0, 0.1). rank_dropout/module_dropout are training-only: eval outputs ignore them.",
    ),
    "conv_loha_flat": dict(
        config="LoHaConfig", builder="tiny_convnet", builder_kwargs={}, task_type=None, peft_model_class="PeftModel",
        adapters={"default": dict(target_modules=["conv2d", "conv2d_strided", "conv1d", "head"], r=2, alpha=32)},
        inputs=conv_inputs, call="positional", output_keys=["logits"],
        notes="LoHa on nn.Conv2d (3x3), nn.Conv1d (k=3) and the Linear head, flattened kernels: hada_w*_b is "
              "(r, in*k*k). alpha=32, r=2: scaling 16 (the Hadamard product of N(0, 0.1) factors is small). "
              "Conv3d is not a PEFT LoHa target. Bare tensor output stored as 'logits'.",
    ),
    "conv_loha_effective_conv2d": dict(
        config="LoHaConfig", builder="tiny_convnet", builder_kwargs={}, task_type=None, peft_model_class="PeftModel",
        adapters={"default": dict(target_modules=["conv2d", "conv2d_strided", "conv1d"], r=4, alpha=8000,
                                  use_effective_conv2d=True)},
        inputs=conv_inputs, call="positional", output_keys=["logits"],
        notes="use_effective_conv2d=True: CP cores hada_t1/hada_t2 (r, r, 3, 3) for the Conv2d layers and "
              "(r, r, 3, 1) for the Conv1d, mode factors hada_w*_a (r, out), hada_w*_b (r, in). r=4, alpha=8000: "
              "scaling 2000, because a Hadamard product of two CP rebuilds of N(0, 0.1) factors is ~1e-5.",
    ),
    "t5_loha_seq2seq": dict(
        config="LoHaConfig", builder="tiny_t5", builder_kwargs={}, task_type="SEQ_2_SEQ_LM",
        peft_model_class="PeftModelForSeq2SeqLM",
        adapters={"default": dict(target_modules=["q", "v", "wo"], r=4, alpha=16)},
        inputs=t5_inputs, output_keys=["logits"],
        notes="LoHa on q, v (encoder/decoder self-attn, cross-attn) and the feed-forward wo; scaling 4.",
    ),
    "bert_loha_seq_cls": dict(
        config="LoHaConfig", builder="tiny_bert_seq_cls", builder_kwargs={}, task_type="SEQ_CLS",
        peft_model_class="PeftModelForSequenceClassification",
        adapters={"default": dict(target_modules=["query", "value"], r=4, alpha=16)},
        inputs=bert_inputs, output_keys=["logits"],
        notes="num_labels=3: peft adds 'classifier' to modules_to_save; its trainable copy is replaced by "
              "N(0, 0.1) and saved as 'base_model.model.classifier.weight' / '.bias'.",
    ),
    "loha_multi_adapter": dict(
        config="LoHaConfig", builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM",
        adapters={"default": LLAMA, "other": dict(target_modules=["k_proj", "o_proj", "down_proj"], r=2, alpha=8,
                                                  init_weights=False)},
        inputs=llama_inputs, output_keys=["logits"],
        notes="Two LoHa adapters, 'default' at adapter/, 'other' at adapter/other/; down_proj holds both. "
              "'logits.merged' = merge_and_unload() with 'default' active ('other' unloaded unmerged).",
    ),
}
