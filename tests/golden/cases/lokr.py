"""Golden cases of LoKr (nn.Linear, nn.Conv1d/Conv2d flat and CP, decompose_both / decompose_factor, the three
initialisations, patterns, several adapters)."""
from __future__ import annotations

from .inputs import conv_inputs, llama_inputs, t5_inputs

# every LoKr factor starts at kaiming or 0: all replaced by N(0, 0.1)
PERTURB = {"replace": ["lokr_", "modules_to_save"]}

LLAMA = dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4)

CASES: dict[str, dict] = {
    "llama_lokr_linear": dict(
        config="LoKrConfig", builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(LLAMA, rank_pattern={"down_proj": 16}, alpha_pattern={"v_proj": 2})},
        inputs=llama_inputs, output_keys=["logits"],
        notes="LoKr on torch Linear layers. q_proj 32->32: out (4, 8), in (4, 8): lokr_w1 (4, 4) and, r=4 < 8/2 "
              "being false, a full lokr_w2 (8, 8); v_proj (32->16: out (4, 4)) alpha=2 (scaling 0.5). "
              "down_proj 64->32 r=16: full lokr_w2 (scaling 0.5).",
    ),
    "llama_lokr_decompose_both": dict(
        config="LoKrConfig", builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(target_modules=["q_proj", "up_proj", "down_proj"], r=1, alpha=4,
                                  decompose_both=True, rank_dropout=0.3, rank_dropout_scale=True,
                                  module_dropout=0.2)},
        inputs=llama_inputs, output_keys=["logits"],
        notes="decompose_both with r=1: W1 = lokr_w1_a (a, 1) @ lokr_w1_b (1, c) where 1 < max(a, c)/2, and "
              "W2 = lokr_w2_a @ lokr_w2_b. up_proj 32->64: out (8, 8). Dropouts are training-only.",
    ),
    "llama_lokr_decompose_factor_lycoris_init": dict(
        config="LoKrConfig", builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(target_modules=["q_proj", "v_proj", "gate_proj"], r=2, decompose_factor=2,
                                  init_weights="lycoris")},
        inputs=llama_inputs, output_keys=["logits"],
        notes="decompose_factor=2: dimensions split as (2, n/2) (32 -> (2, 16), 64 -> (2, 32)), so W2 is the big "
              "factor and low-rank (r=2 < 16/2). init_weights='lycoris' zeroes lokr_w2_b instead of lokr_w1; "
              "the perturbation replaces everything anyway.",
    ),
    "conv_lokr_flat": dict(
        config="LoKrConfig", builder="tiny_convnet", builder_kwargs={}, task_type=None, peft_model_class="PeftModel",
        adapters={"default": dict(target_modules=["conv2d", "conv2d_strided", "conv1d", "head"], r=1)},
        inputs=conv_inputs, call="positional", output_keys=["logits"],
        notes="LoKr on nn.Conv2d, nn.Conv1d and the Linear head. conv2d (3 -> 8, 3x3): in (1, 3), out (2, 4); "
              "r=1 < 4/2: lokr_w2_a (4, 1) @ lokr_w2_b (1, 3*9). conv1d 8 -> 8 k=3 r=1: low-rank W2 too.",
    ),
    "conv_lokr_full_w2_and_cp": dict(
        config="LoKrConfig", builder="tiny_convnet", builder_kwargs={}, task_type=None, peft_model_class="PeftModel",
        adapters={"default": dict(target_modules=["conv2d", "conv2d_strided", "conv1d"], r=1,
                                  use_effective_conv2d=True, rank_pattern={"conv1d": 4})},
        inputs=conv_inputs, call="positional", output_keys=["logits"],
        notes="use_effective_conv2d=True: the Conv2d layers get a CP core lokr_t2 (1, 1, 3, 3) with lokr_w2_a "
              "(1, b), lokr_w2_b (1, d). conv1d has r=4 >= max(b, d)/2, so a full 3-d lokr_w2 (4, 4, 3) that "
              "torch.kron combines with the 2-d W1 into (4, 8, 6) before the reshape to (8, 8, 3): PEFT's layout, "
              "kept. (PEFT 0.21.2 cannot run a Conv1d CP core on torch 2.13: torch.kron rejects its strides.)",
    ),
    "t5_lokr_seq2seq": dict(
        config="LoKrConfig", builder="tiny_t5", builder_kwargs={}, task_type="SEQ_2_SEQ_LM",
        peft_model_class="PeftModelForSeq2SeqLM",
        adapters={"default": dict(target_modules=["q", "v", "wi"], r=2)},
        inputs=t5_inputs, output_keys=["logits"],
        notes="LoKr on q, v and the feed-forward wi (32 -> 64: out (8, 8), in (4, 8)).",
    ),
    "lokr_multi_adapter": dict(
        config="LoKrConfig", builder="tiny_llama", builder_kwargs={}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM",
        adapters={"default": LLAMA, "other": dict(target_modules=["k_proj", "o_proj", "down_proj"], r=1,
                                                  decompose_both=True, init_weights=False)},
        inputs=llama_inputs, output_keys=["logits"],
        notes="Two LoKr adapters, 'default' at adapter/, 'other' at adapter/other/; down_proj holds both. "
              "'logits.merged' = merge_and_unload() with 'default' active ('other' unloaded unmerged).",
    ),
}
