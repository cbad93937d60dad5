"""Golden cases of trainable tokens (nn.Embedding, the Linear heads tied to it, T5's shared embedding, a trainable
padding row, several adapters)."""
from __future__ import annotations

from .inputs import bert_inputs, embed_inputs, gpt2_inputs, llama_inputs, t5_inputs

# trainable_tokens_delta starts as the embedding rows themselves: multiplied by 1 + N(0, 0.1)
PERTURB = {"scale": ["trainable_tokens_delta"]}

CASES: dict[str, dict] = {
    "gpt2_trainable_tokens_tied": dict(
        config="TrainableTokensConfig", builder="tiny_gpt2", builder_kwargs={}, task_type="CAUSAL_LM",
        peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(token_indices=[7, 20, 51, 57, 110, 123])},
        inputs=gpt2_inputs, output_keys=["logits"],
        notes="No target_modules: peft targets the input embedding by name (saved as the string "
              "'transformer.wte'). GPT-2 ties lm_head to wte, so peft also wraps lm_head (a Linear) as a layer "
              "tied to wte's: one delta (6, 32), saved under both paths ('...wte.trainable_tokens_delta' and "
              "'...lm_head.trainable_tokens_delta'), counted once (192 trainable). All six tokens occur in the "
              "inputs; the tied head's logits for them come from the new rows.",
    ),
    "t5_trainable_tokens_shared": dict(
        config="TrainableTokensConfig", builder="tiny_t5", builder_kwargs={}, task_type="SEQ_2_SEQ_LM",
        peft_model_class="PeftModelForSeq2SeqLM",
        adapters={"default": dict(token_indices=[0, 20, 51, 74, 118])},
        inputs=t5_inputs, output_keys=["logits"],
        notes="Default target 'shared' (T5's input embedding); encoder.embed_tokens and decoder.embed_tokens "
              "are the same module and lm_head is tied (tie_word_embeddings): peft wraps all four, tied to "
              "shared's layer, and saves four copies of the one delta. Token 0 is the pad/decoder-start token.",
    ),
    "llama_trainable_tokens_tied_head": dict(
        config="TrainableTokensConfig", builder="tiny_llama", builder_kwargs={"tie_word_embeddings": True},
        task_type="CAUSAL_LM", peft_model_class="PeftModelForCausalLM",
        adapters={"default": dict(token_indices=[7, 20, 51, 121])},
        inputs=llama_inputs, output_keys=["logits"],
        notes="Llama with tie_word_embeddings=True: lm_head follows model.embed_tokens. No target_modules: "
              "peft's default, the input embedding's name as a string ('model.embed_tokens'); with "
              "save_embedding_layers='auto' neither library saves the full embedding for trainable tokens.",
    ),
    "embedding_trainable_tokens_padding": dict(
        config="TrainableTokensConfig", builder="tiny_embed_mlp", builder_kwargs={}, task_type=None,
        peft_model_class="PeftModel",
        adapters={"default": dict(token_indices=[0, 13, 39, 49], target_modules=["emb"], init_weights=False)},
        inputs=embed_inputs, call="positional", output_keys=["logits"],
        notes="nn.Embedding(50, 16, padding_idx=0) of a plain module (no get_input_embeddings: target named). "
              "Token 0 is the padding row and trainable: its output is the new row, its gradient zero, as "
              "F.embedding gives. init_weights=False: peft starts the rows at N(0, 1) (then perturbed).",
    ),
    "bert_trainable_tokens_two_adapters": dict(
        config="TrainableTokensConfig", builder="tiny_bert", builder_kwargs={}, task_type="FEATURE_EXTRACTION",
        peft_model_class="PeftModelForFeatureExtraction",
        adapters={"default": dict(token_indices=[0, 13, 51, 110]),
                  "other": dict(token_indices=[20, 76, 123])},
        inputs=bert_inputs, output_keys=["last_hidden_state"],
        notes="Two adapters on bert's word_embeddings (default target 'embeddings.word_embeddings', untied), "
              "disjoint tokens; 'default' includes the padding token 0. 'other' saved at adapter/other/. "
              "'.merged' merges 'default' only.",
    ),
}
