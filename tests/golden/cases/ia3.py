"""Golden cases of (IA)^3: PEFT's default targets and feed-forward modules, biases scaled by the merge, GPT-2's
Conv1D, Conv2d/Conv3d, and two adapters."""
from __future__ import annotations

from .inputs import conv_inputs, gpt2_inputs, llama_inputs, t5_inputs

# the vectors start at 1 (the identity): multiply, do not replace
PERTURB = {"scale": ["ia3_l"], "replace": ["modules_to_save"]}

CASES: dict[str, dict] = {
    "ia3_llama_defaults": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        config="IA3Config", adapters={"default": {}}, inputs=llama_inputs, output_keys=["logits"],
        notes="IA3Config() with nothing set: peft fills target_modules = {k_proj, v_proj, down_proj} and "
              "feedforward_modules = {down_proj} from its llama defaults and saves them. k/v scale their "
              "outputs (ia3_l (out, 1)), down_proj its input (ia3_l (1, 64)). ia3_l multiplied by 1 + N(0, 0.1).",
    ),
    "ia3_llama_bias_merge": dict(
        builder="tiny_llama", builder_kwargs={"attention_bias": True, "mlp_bias": True}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM", config="IA3Config",
        adapters={"default": dict(target_modules=["q_proj", "o_proj", "up_proj", "down_proj"],
                                  feedforward_modules=["down_proj"])},
        inputs=llama_inputs, output_keys=["logits"], tolerance=1e-5,
        notes="Llama with biases on every Linear: the merge scales W and b of the output-scaled q/o/up_proj "
              "(b * l) and only W's columns of the input-scaled down_proj (its bias untouched), so 'logits.merged' "
              "matches 'logits'. ia3_l multiplied by 1 + N(0, 0.1).",
    ),
    "ia3_gpt2_conv1d": dict(
        builder="tiny_gpt2", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        config="IA3Config", adapters={"default": dict(fan_in_fan_out=True)},
        inputs=gpt2_inputs, output_keys=["logits"],
        notes="GPT-2's Conv1D layers (weight (in, out)) with peft's gpt2 defaults: target_modules = {c_attn, "
              "mlp.c_proj}, feedforward_modules = {mlp.c_proj}. fan_in_fan_out=True given explicitly (peft would "
              "set it on the config itself with a warning). ia3_l multiplied by 1 + N(0, 0.1).",
    ),
    "ia3_t5_defaults": dict(
        builder="tiny_t5", builder_kwargs={}, task_type="SEQ_2_SEQ_LM", peft_model_class="PeftModelForSeq2SeqLM",
        config="IA3Config", adapters={"default": dict(target_modules=["k", "v", "wo"])},
        inputs=t5_inputs, output_keys=["logits"],
        notes="target_modules given, feedforward_modules left unset: peft fills {wo} from its t5 defaults (so the "
              "DenseReluDense.wo layers scale their input) and saves it. ia3_l multiplied by 1 + N(0, 0.1).",
    ),
    "ia3_conv": dict(
        builder="tiny_convnet", builder_kwargs={}, task_type=None, peft_model_class="PeftModel", config="IA3Config",
        adapters={"default": dict(target_modules=["conv2d", "conv2d_strided", "conv3d", "head"],
                                  feedforward_modules=["conv2d_strided", "conv3d"])},
        inputs=conv_inputs, call="positional", output_keys=["logits"],
        notes="nn.Conv2d (output-scaled conv2d: ia3_l (1, 8, 1, 1); input-scaled conv2d_strided), nn.Conv3d "
              "(input-scaled, one input channel: ia3_l (1, 1, 1, 1, 1)) and a Linear head. peft does not wrap "
              "nn.Conv1d, so conv1d is not targeted. Bare tensor output stored as 'logits'.",
    ),
    "ia3_multi_adapter": dict(
        builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        config="IA3Config",
        adapters={"default": dict(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
                  "other": dict(target_modules=["q_proj", "up_proj", "down_proj"], feedforward_modules=["up_proj"])},
        inputs=llama_inputs, output_keys=["logits"],
        notes="Two adapters; 'other' shares down_proj with 'default' and does not list it as feed-forward, but "
              "peft's layer keeps scaling its input (fixed by the first adapter): its ia3_l is (1, 64). "
              "'logits.merged' merges 'default' only.",
    ),
}
