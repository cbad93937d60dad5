"""Golden cases of HRA: Householder reflections on Linear and Conv2d layers, Gram-Schmidt, biases, a classifier
head in modules_to_save, and two adapters."""
from __future__ import annotations

from .inputs import bert_inputs, conv_inputs, llama_inputs

# hra_u starts symmetric (pairs of equal vectors, H = I): replaced with N(0, 0.1), a random orthogonal H
PERTURB = {"replace": ["hra_u", "modules_to_save"]}

CASES: dict[str, dict] = {
    "hra_llama": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        config="HRAConfig", adapters={"default": dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4)},
        inputs=llama_inputs, output_keys=["logits"], tolerance=1e-5,
        notes="HRA r=4 on q_proj, v_proj (hra_u (32, 4)) and down_proj (hra_u (64, 4)) of both layers: "
              "y = x (W H)^T, H the product of the 4 reflections. hra_u replaced with N(0, 0.1).",
    ),
    "hra_llama_gs_bias": dict(
        builder="tiny_llama", builder_kwargs={"attention_bias": True, "mlp_bias": True}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM", config="HRAConfig",
        adapters={"default": dict(target_modules=["q_proj", "k_proj", "o_proj", "up_proj"], r=6, apply_GS=True,
                                  bias="hra_only")},
        inputs=llama_inputs, output_keys=["logits"], tolerance=1e-5,
        notes="apply_GS=True: H = I - 2 Q Q^T with Q the Gram-Schmidt orthonormalisation of hra_u (r=6). Llama "
              "built with biases on every Linear; bias='hra_only' trains the 4 targeted layers' biases, perturbed "
              "(+N(0, 0.1)) and saved as '...base_layer.bias', so '.disabled' keeps the perturbed biases.",
    ),
    "hra_conv": dict(
        builder="tiny_convnet", builder_kwargs={}, task_type=None, peft_model_class="PeftModel",
        config="HRAConfig", adapters={"default": dict(target_modules=["conv2d", "conv2d_strided", "head"], r=2)},
        inputs=conv_inputs, call="positional", output_keys=["logits"], tolerance=1e-5,
        notes="Conv2d 3->8 (k=3, padding 1) and 8->8 (k=3, stride 2, padding 1): hra_u is (in*3*3, 2) and the "
              "reflections act on the flattened (out, in*k*k) weight; 'head' is a Linear (hra_u (8, 2)). Bare "
              "tensor output stored as 'logits'.",
    ),
    "hra_bert_seq_cls": dict(
        builder="tiny_bert_seq_cls", builder_kwargs={}, task_type="SEQ_CLS",
        peft_model_class="PeftModelForSequenceClassification", config="HRAConfig",
        adapters={"default": dict(target_modules=["query", "value", "output.dense"], r=8, init_weights=False)},
        inputs=bert_inputs, output_keys=["logits"], tolerance=1e-5,
        notes="init_weights=False (random kaiming vectors) then replaced with N(0, 0.1); 'output.dense' matches "
              "both attention.output.dense (32->32) and output.dense (64->32). peft adds 'classifier' to "
              "modules_to_save; its copy is refilled with N(0, 0.1).",
    ),
    "hra_multi_adapter": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        config="HRAConfig",
        adapters={"default": dict(target_modules=["q_proj", "v_proj"], r=4),
                  "other": dict(target_modules=["q_proj", "o_proj", "gate_proj"], r=2, apply_GS=True)},
        inputs=llama_inputs, output_keys=["logits"], tolerance=1e-5,
        notes="Two adapters, both on q_proj: 'default' at adapter/, 'other' (Gram-Schmidt, r=2) at adapter/other/. "
              "'logits.other' after set_adapter('other'); 'logits.merged' merges 'default' only (the 'other' "
              "layers are unloaded unmerged).",
    ),
}
