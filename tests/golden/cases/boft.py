"""Golden cases of BOFT (nn.Linear and nn.Conv2d, block size or block count, bias, several adapters)."""
from __future__ import annotations

from .inputs import bert_inputs, conv_inputs, embed_inputs, llama_inputs

# boft_R starts at 0 (the identity rotation): replaced by N(0, 0.1); boft_s starts at 1: multiplied by 1+N(0, 0.1)
PERTURB = {"scale": ["boft_s"], "replace": ["boft_R", "modules_to_save"]}

LLAMA_QV = dict(target_modules=["q_proj", "v_proj"], boft_block_size=4)

CASES: dict[str, dict] = {
    "llama_boft_linear": dict(
        config="BOFTConfig", builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(target_modules=["q_proj", "v_proj", "down_proj"], boft_block_size=4)},
        inputs=llama_inputs, output_keys=["logits"],
        notes="BOFT on torch Linear layers, blocks of 4: q_proj/v_proj (in 32: 8 blocks) and down_proj "
              "(in 64: 16 blocks). boft_R (1, D, 4, 4) replaced by N(0, 0.1); boft_s ((out, 1), init 1) "
              "multiplied by 1 + N(0, 0.1).",
    ),
    "llama_boft_block_num_bias_butterfly": dict(
        config="BOFTConfig", builder="tiny_llama", builder_kwargs={"attention_bias": True, "mlp_bias": True},
        task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(target_modules=["q_proj", "o_proj", "up_proj"], boft_block_size=0,
                                  boft_block_num=4, boft_n_butterfly_factor=2, boft_dropout=0.1,
                                  bias="boft_only")},
        inputs=llama_inputs, output_keys=["logits"],
        notes="boft_block_num=4 (block size in_features/4: 8 for q/o/up_proj), bias='boft_only' on a Llama "
              "with biases (the three targeted biases train, are perturbed and saved as '.base_layer.bias'), "
              "boft_dropout=0.1 (inactive in eval). boft_n_butterfly_factor=2 is recorded as peft 0.21.2 runs it "
              "without its fbd_cuda extension: it warns and uses ONE factor, so boft_R is (1, 4, 8, 8) while the "
              "saved config still says 2.",
    ),
    "conv_boft_conv2d": dict(
        config="BOFTConfig", builder="tiny_convnet", builder_kwargs={}, task_type=None, peft_model_class="PeftModel",
        adapters={"default": dict(target_modules=["conv2d", "conv2d_strided"], boft_block_size=9)},
        inputs=conv_inputs, call="positional", output_keys=["logits"],
        notes="BOFT on nn.Conv2d: the rotation spans in_channels*k*k (conv2d 3*3*3=27: 3 blocks of 9; "
              "conv2d_strided 8*3*3=72: 8 blocks), boft_s is (1, out). Bare tensor output stored as 'logits'.",
    ),
    "embedding_mlp_boft_linear": dict(
        config="BOFTConfig", builder="tiny_embed_mlp", builder_kwargs={}, task_type=None,
        peft_model_class="PeftModel",
        adapters={"default": dict(target_modules=["lin0", "lin1"], boft_block_size=2, init_weights=False)},
        inputs=embed_inputs, output_keys=["logits"],
        notes="The embedding model's two Linear layers (peft's BOFT does not wrap nn.Embedding), blocks of 2, "
              "init_weights=False (R ~ N(0, 0.1), s ~ N(1, 0.1) before the perturbation).",
    ),
    "bert_seq_cls_boft": dict(
        config="BOFTConfig", builder="tiny_bert_seq_cls", builder_kwargs={}, task_type="SEQ_CLS",
        peft_model_class="PeftModelForSequenceClassification",
        adapters={"default": dict(target_modules=["query", "value"], boft_block_size=8)},
        inputs=bert_inputs, output_keys=["logits"],
        notes="num_labels=3; peft adds 'classifier' to modules_to_save (its copy refilled with N(0, 0.1)).",
    ),
    "multi_adapter_boft": dict(
        config="BOFTConfig", builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM",
        adapters={"default": LLAMA_QV,
                  "other": dict(target_modules=["k_proj", "o_proj", "gate_proj"], boft_block_size=0,
                                boft_block_num=2)},
        inputs=llama_inputs, output_keys=["logits"],
        notes="Two BOFT adapters saved by one save_pretrained call: 'default' at adapter/, 'other' at "
              "adapter/other/ (k_proj in 32: 2 blocks of 16). 'logits.other' after set_adapter('other'); "
              "'logits.merged' = merge_and_unload() with 'default' active (the 'other' layers unloaded unmerged).",
    ),
}
