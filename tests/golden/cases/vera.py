"""Golden cases of VeRA: the shared projections saved (base_model.vera_A / vera_B) or rebuilt from the PRNG key,
Linear and GPT-2's Conv1D, biases, and two adapters sharing one pair of projections."""
from __future__ import annotations

from .inputs import bert_inputs, gpt2_inputs, llama_inputs

# vera_lambda_b starts at 0 (the identity) and vera_lambda_d at d_initial: both replaced; the projections are
# buffers, never perturbed
PERTURB = {"replace": ["vera_lambda_", "modules_to_save"]}

CASES: dict[str, dict] = {
    "vera_llama": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        config="VeraConfig", adapters={"default": dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4)},
        inputs=llama_inputs, output_keys=["logits"], tolerance=1e-5,
        notes="VeRA r=4 on q_proj (32->32), v_proj (32->16) and down_proj (64->32) of both layers: vera_A is "
              "(4, 64) and vera_B (32, 4), the largest in/out over the targets, drawn from projection_prng_key=0, "
              "and saved as 'base_model.vera_A' / 'base_model.vera_B' (save_projection=True, the default). Each "
              "layer slices them to its shape. vera_lambda_b / vera_lambda_d replaced with N(0, 0.1).",
    ),
    "vera_gpt2_conv1d_bias": dict(
        builder="tiny_gpt2", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        config="VeraConfig",
        adapters={"default": dict(target_modules=["c_attn", "c_fc"], r=8, fan_in_fan_out=True, bias="vera_only",
                                  projection_prng_key=42, d_initial=0.5)},
        inputs=gpt2_inputs, output_keys=["logits"], tolerance=1e-5,
        notes="GPT-2 Conv1D layers (weights (in, out), fan_in_fan_out=True): c_attn 32->96 and c_fc 32->128, so "
              "vera_A (8, 32), vera_B (128, 8) from projection_prng_key=42. bias='vera_only': the targeted layers' "
              "base biases train, are perturbed (+N(0, 0.1)) and saved as '...base_layer.bias'; so '.disabled' keeps "
              "the perturbed biases.",
    ),
    "vera_bert_no_projection": dict(
        builder="tiny_bert", builder_kwargs={}, task_type="FEATURE_EXTRACTION",
        peft_model_class="PeftModelForFeatureExtraction", config="VeraConfig",
        adapters={"default": dict(target_modules=["query", "value", "intermediate.dense"], r=6,
                                  save_projection=False, projection_prng_key=1234)},
        inputs=bert_inputs, output_keys=["last_hidden_state"], tolerance=1e-5,
        notes="save_projection=False: the checkpoint holds only the lambdas, so loading must rebuild vera_A (6, 32) "
              "and vera_B (64, 6) from projection_prng_key=1234 with PEFT's exact draws (kaiming-uniform on a CPU "
              "generator, vera_A first). peft warns about this on construction and on load.",
    ),
    "vera_multi_adapter": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        config="VeraConfig",
        adapters={"default": dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4),
                  "other": dict(target_modules=["k_proj", "o_proj"], r=4, init_weights=False)},
        inputs=llama_inputs, output_keys=["logits"], tolerance=1e-5,
        notes="Two adapters: 'other' (k_proj 32->16, o_proj 32->32) reuses the projections 'default' drew (vera_A "
              "(4, 64), vera_B (32, 4): PEFT sizes them by the first adapter only), so both adapter folders hold "
              "the same 'base_model.vera_A' / 'vera_B'. 'logits.other' after set_adapter('other'); 'logits.merged' "
              "merges 'default' only.",
    ),
}
