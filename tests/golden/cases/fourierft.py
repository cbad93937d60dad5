"""Golden cases of FourierFT: seeded spectral locations (never saved) on Linear and GPT-2's Conv1D,
n_frequency_pattern, layers_to_transform with bias='fourier_only', a classifier head, and two adapters."""
from __future__ import annotations

from .inputs import bert_inputs, gpt2_inputs, llama_inputs

PERTURB = {"replace": ["fourierft_spectrum", "modules_to_save"]}

CASES: dict[str, dict] = {
    "fourierft_llama": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        config="FourierFTConfig", adapters={"default": dict(target_modules=["q_proj", "v_proj"], n_frequency=100)},
        inputs=llama_inputs, output_keys=["logits"],
        notes="q_proj (32x32) and v_proj (16x32): 100 coefficients each at randperm(out*in, seed 777)[:100], "
              "scaling 150. Only the spectra are saved: a loader must draw the same locations. Spectra "
              "replaced by N(0, 0.1).",
    ),
    "fourierft_gpt2_conv1d": dict(
        builder="tiny_gpt2", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        config="FourierFTConfig",
        adapters={"default": dict(target_modules=["c_attn", "mlp.c_proj"], fan_in_fan_out=True, n_frequency=200,
                                  n_frequency_pattern={"c_attn": 64}, scaling=80.0, random_loc_seed=1)},
        inputs=gpt2_inputs, output_keys=["logits"],
        notes="GPT-2 Conv1D layers: the update is (out, in) and merged transposed into the (in, out) weight. "
              "c_attn (96x32) takes n_frequency_pattern's 64, mlp.c_proj (32x128) the default 200. "
              "Spectra replaced by N(0, 0.1).",
    ),
    "fourierft_llama_layers_bias": dict(
        builder="tiny_llama", builder_kwargs={"attention_bias": True, "mlp_bias": True}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM", config="FourierFTConfig",
        adapters={"default": dict(target_modules=["q_proj", "o_proj", "down_proj"], n_frequency=50,
                                  layers_to_transform=[1], bias="fourier_only", init_weights=True)},
        inputs=llama_inputs, output_keys=["logits"],
        notes="Only layer 1 adapted; bias='fourier_only' trains (and saves) the biases of the three targeted "
              "Linear layers, perturbed by + N(0, 0.1). init_weights=True (zero spectra) before the perturbation.",
    ),
    "fourierft_bert_seq_cls": dict(
        builder="tiny_bert_seq_cls", builder_kwargs={}, task_type="SEQ_CLS",
        peft_model_class="PeftModelForSequenceClassification", config="FourierFTConfig",
        adapters={"default": dict(target_modules=["query", "value"], n_frequency=64,
                                  n_frequency_pattern={"layer.1.attention.self.value": 16}, random_loc_seed=42)},
        inputs=bert_inputs, output_keys=["logits"],
        notes="SEQ_CLS: peft adds the classifier to modules_to_save (its copy refilled with N(0, 0.1)). "
              "n_frequency_pattern gives layer 1's value 16 coefficients, every other target 64.",
    ),
    "fourierft_multi_adapter": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        config="FourierFTConfig",
        adapters={"default": dict(target_modules=["q_proj", "v_proj"], n_frequency=100),
                  "other": dict(target_modules=["q_proj", "up_proj"], n_frequency=40, random_loc_seed=5,
                                scaling=30.0)},
        inputs=llama_inputs, output_keys=["logits"],
        notes="Two adapters with different seeds, sizes and scalings; both on q_proj. 'logits.merged' merges "
              "'default' only.",
    ),
}
