"""Golden cases of OFT: Linear (Cayley-Neumann and exact Cayley, COFT, block_share), Conv2d, Embedding, a
classification head, and two adapters. PEFT 0.21.2 does not wrap GPT-2's Conv1D with OFT, so there is no
gpt2 case."""
from __future__ import annotations

from .inputs import bert_inputs, conv_inputs, embed_inputs, llama_inputs

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# OFT's packed skew parameters start at zero (the identity rotation): replace them, never scale
PERTURB = {"replace": ["oft_R", "oft_embedding_R", "modules_to_save"]}

CASES: dict[str, dict] = {
    "llama_oft_qv": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        config="OFTConfig", adapters={"default": dict(target_modules=["q_proj", "v_proj"], oft_block_size=8)},
        inputs=llama_inputs, output_keys=["logits"],
        notes="OFT with PEFT's defaults but oft_block_size=8 (r=0: 32/8 = 4 blocks per layer) on q_proj/v_proj of "
              "both layers: Cayley-Neumann with 5 terms. oft_R.weight (4, 28) perturbed with N(0, 0.1).",
    ),
    "llama_oft_all_linear_exact": dict(
        builder="tiny_llama", builder_kwargs={"attention_bias": True, "mlp_bias": True},
        task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM", config="OFTConfig",
        adapters={"default": dict(target_modules="all-linear", r=4, oft_block_size=0, use_cayley_neumann=False,
                                  bias="oft_only")},
        inputs=llama_inputs, output_keys=["logits"], tolerance=1e-5,
        notes="all-linear (lm_head excluded by peft) with r=4 blocks per layer: block size 8 on the 32-wide "
              "inputs, 16 on down_proj (64 wide). Exact Cayley transform (use_cayley_neumann=False: "
              "R = (I - Q)(I + Q)^-1 by torch.linalg.solve). bias='oft_only' on a Llama built with biases: the "
              "biases of the 14 targeted layers train, are perturbed (+N(0, 0.1)) and saved.",
    ),
    "llama_oft_coft_block_share": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        config="OFTConfig",
        adapters={"default": dict(target_modules=["q_proj", "v_proj", "down_proj"], oft_block_size=8, coft=True,
                                  eps=0.05, block_share=True, num_cayley_neumann_terms=7)},
        inputs=llama_inputs, output_keys=["logits"], tolerance=1e-5,
        notes="COFT (eps=0.05: each block's ||Q||_F is projected to at most 0.05/sqrt(1), in place, on every "
              "forward) with block_share (one (1, 28) block per layer serves all 4 or 8 blocks) and 7 Neumann "
              "terms. The stored weights are the projected ones (peft projected them during the first forward, "
              "before saving).",
    ),
    "bert_oft_seq_cls": dict(
        builder="tiny_bert_seq_cls", builder_kwargs={}, task_type="SEQ_CLS",
        peft_model_class="PeftModelForSequenceClassification", config="OFTConfig",
        adapters={"default": dict(target_modules=["query", "value"], oft_block_size=16)},
        inputs=bert_inputs, output_keys=["logits"],
        notes="num_labels=3. peft adds 'classifier' to modules_to_save; its trainable copy is refilled with "
              "N(0, 0.1) and saved as 'base_model.model.classifier.weight' / '.bias'. OFT blocks of 16 (2 per "
              "layer) on query/value.",
    ),
    "conv_oft": dict(
        builder="tiny_convnet", builder_kwargs={}, task_type=None, peft_model_class="PeftModel", config="OFTConfig",
        adapters={"default": dict(target_modules=["conv2d", "conv2d_strided"], oft_block_size=9)},
        inputs=conv_inputs, call="positional", output_keys=["logits"], tolerance=1e-5,
        notes="OFT on the two 3x3 Conv2d layers: the rotated dimension is in_channels*3*3 (27 and 72, blocks of "
              "9: r=3 and r=8). peft 0.21.2 rotates unfolded input patches (stride 1, no padding) and folds them "
              "back with F.fold on a (B, C, Ho, Wo, kh, kw) tensor read as (B, C*kh*kw, Ho*Wo): for k > 1 that "
              "is not the identity even at init and not what merging (W <- W BD^T) computes, so 'logits.merged' "
              "differs from 'logits' (merged_matches_adapted=false): peft's real behaviour, recorded as is.",
    ),
    "embedding_oft": dict(
        builder="tiny_embed_mlp", builder_kwargs={}, task_type=None, peft_model_class="PeftModel",
        config="OFTConfig", adapters={"default": dict(target_modules=["emb", "lin0"], oft_block_size=4)},
        inputs=embed_inputs, call="positional", output_keys=["logits"],
        notes="OFT on nn.Embedding (oft_embedding_R: the looked-up rows are rotated, embedding_dim 16 = 4 blocks "
              "of 4; merge E <- E BD) and on a Linear (oft_R). Bare tensor output stored as 'logits'.",
    ),
    "multi_adapter_oft": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        config="OFTConfig",
        adapters={"default": dict(target_modules=["q_proj", "v_proj"], oft_block_size=8),
                  "other": dict(target_modules=["k_proj", "o_proj", "gate_proj"], r=2, oft_block_size=0,
                                use_cayley_neumann=False)},
        inputs=llama_inputs, output_keys=["logits"], tolerance=1e-5,
        notes="Two adapters saved by one save_pretrained call: 'default' (blocks of 8, Neumann) at adapter/, "
              "'other' (2 blocks per layer, exact Cayley) at adapter/other/. 'logits.other' after "
              "set_adapter('other'); 'logits.merged' = merge_and_unload() of a deepcopy with 'default' active.",
    ),
}
