"""Golden cases of LoRA (with rsLoRA, DoRA, rank/alpha patterns, modules_to_save, several adapters)."""
from __future__ import annotations

from .inputs import bert_inputs, conv_inputs, embed_inputs, gpt2_inputs, llama_inputs, t5_inputs

LLAMA_QV = dict(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8)

# peft's rule for LoRA parameters (the committed fixtures were written with it)
PERTURB = {"scale": ["lora_magnitude_vector"], "replace": ["lora_", "modules_to_save"]}

CASES: dict[str, dict] = {
    "llama_lora_qv": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        adapters={"default": LLAMA_QV}, inputs=llama_inputs, output_keys=["logits"],
        notes="Plain LoRA on q_proj/v_proj of both layers. Adapter weights perturbed with N(0, 0.1).",
    ),
    "llama_lora_all_linear_rslora_rank_pattern": dict(
        builder="tiny_llama", builder_kwargs={"attention_bias": True, "mlp_bias": True},
        task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(target_modules="all-linear", r=4, lora_alpha=16, use_rslora=True,
                                  rank_pattern={"mlp.down_proj": 2}, alpha_pattern={"o_proj": 4},
                                  bias="lora_only")},
        inputs=llama_inputs, output_keys=["logits"],
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
        inputs=llama_inputs, output_keys=["logits"],
        notes="Same settings as llama_lora_all_linear_rslora_rank_pattern but with the linear names spelled out "
              "(peft refuses layers_to_transform with a str target_modules), bias='none', and only layer 1 "
              "adapted (layers_to_transform=[1]; layer index found by peft's default layers pattern).",
    ),
    "llama_dora": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4, use_dora=True)},
        inputs=llama_inputs, output_keys=["logits"], tolerance=1e-5,
        notes="DoRA (lora_alpha default 8, r=4). lora_A/lora_B perturbed with N(0, 0.1); the magnitude vectors "
              "(lora_magnitude_vector, initialised by peft to the weight column norms) are multiplied by "
              "(1 + N(0, 0.1)) so they stay realistic.",
    ),
    "gpt2_lora_conv1d": dict(
        builder="tiny_gpt2", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(target_modules=["c_attn", "c_proj", "wte"], r=4, fan_in_fan_out=True)},
        inputs=gpt2_inputs, output_keys=["logits"],
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
        inputs=bert_inputs, output_keys=["logits"],
        notes="num_labels=3. peft adds 'classifier' to modules_to_save automatically; the trainable copy "
              "(classifier.modules_to_save.default.{weight,bias}) is refilled with N(0, 0.1) so it differs from "
              "the base classifier. peft 0.21.2 saves it as 'base_model.model.classifier.weight' / '.bias' "
              "(no 'modules_to_save' in the saved key).",
    ),
    "t5_seq2seq": dict(
        builder="tiny_t5", builder_kwargs={}, task_type="SEQ_2_SEQ_LM", peft_model_class="PeftModelForSeq2SeqLM",
        adapters={"default": dict(target_modules=["q", "v"], r=4)},
        inputs=t5_inputs, output_keys=["logits"],
        notes="LoRA on q and v of encoder self-attn, decoder self-attn and decoder cross-attn.",
    ),
    "conv_lora": dict(
        builder="tiny_convnet", builder_kwargs={}, task_type=None, peft_model_class="PeftModel",
        adapters={"default": dict(target_modules=["conv2d", "conv2d_strided", "conv1d", "conv3d", "head"], r=2)},
        inputs=conv_inputs, call="positional", output_keys=["logits"],
        notes="Plain nn.Module, no task_type -> PeftModel. The model returns a bare tensor, stored as 'logits'. "
              "lora_alpha default 8 -> scaling 4.",
    ),
    "embedding_lora": dict(
        builder="tiny_embed_mlp", builder_kwargs={}, task_type=None, peft_model_class="PeftModel",
        adapters={"default": dict(target_modules=["emb", "lin0"], r=4)},
        inputs=embed_inputs, output_keys=["logits"],
        notes="LoRA on nn.Embedding (lora_embedding_A/B, padding_idx=0) and a Linear. Bare tensor output "
              "stored as 'logits'.",
    ),
    "multi_adapter": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        adapters={"default": LLAMA_QV,
                  "other": dict(target_modules=["k_proj", "o_proj", "gate_proj"], r=2, lora_alpha=4)},
        inputs=llama_inputs, output_keys=["logits"],
        notes="Two adapters saved by one save_pretrained call: 'default' at adapter/, 'other' at adapter/other/. "
              "'logits' == 'logits.default' (default active); 'logits.other' after set_adapter('other'); "
              "'logits.disabled' under disable_adapter() (== base); 'logits.merged' = merge_and_unload() of a "
              "deepcopy with 'default' active (the 'other' layers are unloaded unmerged).",
    ),
    "bert_bias_all": dict(
        builder="tiny_bert", builder_kwargs={}, task_type="FEATURE_EXTRACTION",
        peft_model_class="PeftModelForFeatureExtraction",
        adapters={"default": dict(target_modules=["query", "value"], r=4, bias="all")},
        inputs=bert_inputs, output_keys=["last_hidden_state", "pooler_output"],
        notes="bias='all': every bias in the model (Linear and LayerNorm, incl. pooler) is trainable and saved; "
              "all of them are perturbed (+N(0, 0.1)) after get_peft_model. Note the biases live in the base "
              "model, so '.disabled' still uses the perturbed biases (peft does not restore them); "
              "'last_hidden_state.base' is the untouched base model.",
    ),
}
