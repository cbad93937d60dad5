"""The rows of the method matrix: one per registered method (a new method adds its row here).

A row names peft's config class (surgery's has the same name), the config kwargs per tiny model (a model a
method cannot adapt in PEFT is left out), how to make its fresh adapter non-identity (`scale` markers: names
multiplied by 1 + N(0, std); every other trainable parameter is set to N(0, std)), and what PEFT supports
for it (merging, mixed batches). Models are tests.support.helpers.MODELS entries.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    config: str                          # the config class name, in peft and in surgery
    models: dict                         # {MODELS name: config kwargs}
    scale: tuple[str, ...] = ()          # parameter-name markers perturbed multiplicatively
    std: float = 0.1
    tolerance: float = 1e-5              # surgery vs peft outputs (float32)
    merges: bool = True                  # merge_and_unload / merge_adapter exist for the method
    mixed_batch: bool = False            # adapter_names= in forward (PEFT supports it for this method)
    second: dict = field(default_factory=dict)   # {MODELS name: kwargs of a second adapter} (default: the first's)

    @property
    def id(self) -> str:
        return self.config.removesuffix("Config")


ROWS = [
    Row("LoraConfig", {
        "llama": dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4),
        "gpt2": dict(target_modules=["c_attn", "c_fc"], r=4),
        "bert": dict(target_modules=["query", "value"], r=4),
        "t5": dict(target_modules=["q", "v", "wo"], r=4),
        "conv": dict(target_modules=["conv2d", "conv1d", "conv3d", "head"], r=2),
        "embedding": dict(target_modules=["emb", "lin0"], r=4),
    }, second={"llama": dict(target_modules=["k_proj", "o_proj"], r=2, use_dora=True)}, mixed_batch=True),
    Row("PromptTuningConfig", {
        "llama": dict(task_type="CAUSAL_LM", num_virtual_tokens=3),
        "gpt2": dict(task_type="CAUSAL_LM", num_virtual_tokens=3),
        "bert": dict(task_type="FEATURE_EXTRACTION", num_virtual_tokens=3),
    }, merges=False),
    Row("BOFTConfig", {   # PEFT wraps nn.Linear and nn.Conv2d only (not GPT-2's Conv1D, nor embeddings)
        "llama": dict(target_modules=["q_proj", "v_proj", "down_proj"], boft_block_size=4),
        "llama_bias": dict(target_modules=["q_proj", "o_proj", "up_proj"], boft_block_size=8, bias="boft_only"),
        "bert": dict(target_modules=["query", "value"], boft_block_size=0, boft_block_num=4),
        "t5": dict(target_modules=["q", "v", "wo"], boft_block_size=8),
        "conv": dict(target_modules=["conv2d", "conv2d_strided", "head"], boft_block_size=0, boft_block_num=1),
        "embedding": dict(target_modules=["lin0", "lin1"], boft_block_size=4),
    }, scale=("boft_s",),
        second={"llama": dict(target_modules=["k_proj", "o_proj"], boft_block_size=0, boft_block_num=2,
                              boft_dropout=0.1),
                "llama_bias": dict(target_modules=["k_proj", "down_proj"], boft_block_size=2)}),   # one bias adapter
    Row("LNTuningConfig", {   # PEFT copies any targeted module; the default targets are the norms (none for bert)
        "llama": dict(),
        "llama_bias": dict(target_modules=["input_layernorm", "norm", "o_proj"]),
        "gpt2": dict(),
        "bert": dict(target_modules=["LayerNorm"]),
        "t5": dict(),
        "conv": dict(target_modules=["conv2d", "head"]),
        "embedding": dict(target_modules=["emb"]),
    }, scale=("ln_tuning_layers",),   # PEFT's forward fails where the active adapter is missing: a superset
        second={"llama": dict(target_modules=["input_layernorm", "post_attention_layernorm", "norm", "k_proj"])}),
    # PEFT wraps nn.Embedding and the Linear heads tied to it. The tied models (gpt2, t5) are left out: a second
    # PEFT adapter there nests the head's layer and every forward fails; tests/methods/trainable_tokens covers them
    Row("TrainableTokensConfig", {
        "llama": dict(token_indices=[7, 20, 51, 57, 110, 123]),
        "bert": dict(token_indices=[0, 7, 20, 51, 110]),   # 0: bert's padding_idx (no gradient, as in PEFT)
        "embedding": dict(target_modules=["emb"], token_indices=[0, 7, 13, 39, 49]),
    }, scale=("trainable_tokens_delta",), second={"llama": dict(token_indices=[61, 124, 117])}),
    Row("LoHaConfig", {   # PEFT wraps nn.Linear, Conv1d and Conv2d only (not GPT-2's Conv1D, Conv3d, embeddings)
        "llama": dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4),
        "llama_bias": dict(target_modules=["q_proj", "o_proj", "up_proj"], r=2, alpha=4, rank_dropout=0.2),
        "bert": dict(target_modules=["query", "value"], r=4, module_dropout=0.5),
        "t5": dict(target_modules=["q", "v", "wo"], r=4, rank_pattern={"wo": 2}, alpha_pattern={"q": 16}),
        "conv": dict(target_modules=["conv2d", "conv2d_strided", "conv1d", "head"], r=2),
        "embedding": dict(target_modules=["lin0", "lin1"], r=3, init_weights=False),
    }, std=0.3,   # a Hadamard product of products of N(0, std) factors: 0.1 barely moves the outputs
        second={"llama": dict(target_modules=["k_proj", "o_proj"], r=2, alpha=4),
                "conv": dict(target_modules=["conv2d", "conv2d_strided", "conv1d"], r=3, use_effective_conv2d=True)}),
    Row("LoKrConfig", {   # PEFT wraps nn.Linear, Conv1d and Conv2d only (not GPT-2's Conv1D, Conv3d, embeddings)
        "llama": dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4),
        "llama_bias": dict(target_modules=["q_proj", "o_proj", "up_proj"], r=1, decompose_both=True,
                           rank_dropout=0.2, rank_dropout_scale=True),
        "bert": dict(target_modules=["query", "value"], r=16, decompose_factor=4, module_dropout=0.5),
        "t5": dict(target_modules=["q", "v", "wo"], r=2, rank_pattern={"wo": 8}, alpha_pattern={"q": 16}),
        "conv": dict(target_modules=["conv2d", "conv2d_strided", "conv1d", "head"], r=2),
        "embedding": dict(target_modules=["lin0", "lin1"], r=2, init_weights="lycoris"),
    }, second={"llama": dict(target_modules=["k_proj", "o_proj"], r=1, decompose_both=True, init_weights=False),
               # PEFT's LoKr Conv1d with use_effective_conv2d fails in torch.kron (torch 2.13): Conv2d only
               "conv": dict(target_modules=["conv2d", "conv2d_strided"], r=1, use_effective_conv2d=True)}),
    Row("VeraConfig", {   # PEFT wraps nn.Linear and GPT-2's Conv1D only; a second adapter shares the projections
        "llama": dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4),
        "llama_bias": dict(target_modules=["q_proj", "o_proj", "up_proj"], r=4, bias="vera_only"),
        "gpt2": dict(target_modules=["c_attn", "c_fc"], r=4, fan_in_fan_out=True),
        "bert": dict(target_modules=["query", "value"], r=4, save_projection=False),
        "t5": dict(target_modules=["q", "v", "wo"], r=4, projection_prng_key=7),
        "conv": dict(target_modules=["head"], r=2),
        "embedding": dict(target_modules=["lin0", "lin1"], r=4),
    }, second={"llama": dict(target_modules=["k_proj", "o_proj"], r=4, init_weights=False),
               "llama_bias": dict(target_modules=["k_proj", "v_proj"], r=4)}),
    Row("HRAConfig", {   # PEFT wraps nn.Linear and nn.Conv2d only (not GPT-2's Conv1D, nor embeddings)
        "llama": dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4),
        "llama_bias": dict(target_modules=["q_proj", "o_proj", "up_proj"], r=2, bias="hra_only"),
        "bert": dict(target_modules=["query", "value"], r=4, apply_GS=True),
        "t5": dict(target_modules=["q", "v", "wo"], r=6),
        "conv": dict(target_modules=["conv2d", "conv2d_strided", "head"], r=2),
        "embedding": dict(target_modules=["lin0", "lin1"], r=3, init_weights=False),
    }, second={"llama": dict(target_modules=["k_proj", "o_proj", "down_proj"], r=2, apply_GS=True),
               "llama_bias": dict(target_modules=["k_proj", "down_proj"], r=4)}),
    Row("IA3Config", {   # PEFT wraps nn.Linear, GPT-2's Conv1D and nn.Conv2d/3d (not nn.Conv1d, nor embeddings)
        "llama": dict(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
        "llama_bias": dict(target_modules=["q_proj", "o_proj", "up_proj", "down_proj"],
                           feedforward_modules=["down_proj"]),
        "gpt2": dict(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"]),
        "bert": dict(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"]),
        "t5": dict(target_modules=["k", "v", "wo"], feedforward_modules=["wo"]),
        "conv": dict(target_modules=["conv2d", "conv2d_strided", "conv3d", "head"],
                     feedforward_modules=["conv2d_strided", "conv3d"]),
        "embedding": dict(target_modules=["lin0", "lin1"], feedforward_modules=["lin1"]),
    }, scale=("ia3_l",),
        second={"llama": dict(target_modules=["q_proj", "up_proj"], feedforward_modules=["up_proj"]),
                "llama_bias": dict(target_modules=["k_proj", "gate_proj"], feedforward_modules=[])}),
    Row("FourierFTConfig", {   # PEFT wraps nn.Linear and GPT-2's Conv1D only
        "llama": dict(target_modules=["q_proj", "v_proj", "down_proj"], n_frequency=64),
        "llama_bias": dict(target_modules=["q_proj", "o_proj", "up_proj"], n_frequency=48, bias="fourier_only"),
        "gpt2": dict(target_modules=["c_attn", "mlp.c_proj"], n_frequency=64, n_frequency_pattern={"c_attn": 40}),
        "bert": dict(target_modules=["query", "value"], n_frequency=64, scaling=100.0),
        "t5": dict(target_modules=["q", "v", "wo"], n_frequency=64, random_loc_seed=3),
        "conv": dict(target_modules=["head"], n_frequency=20),
        "embedding": dict(target_modules=["lin0", "lin1"], n_frequency=32),
    }, second={"llama": dict(target_modules=["k_proj", "o_proj"], n_frequency=16, random_loc_seed=11, scaling=50.0),
               "llama_bias": dict(target_modules=["k_proj", "down_proj"], n_frequency=16)}),
    Row("OFTConfig", {   # PEFT wraps nn.Linear, nn.Conv2d and nn.Embedding (not GPT-2's Conv1D, nor Conv1d/3d)
        "llama": dict(target_modules=["q_proj", "v_proj", "down_proj"], oft_block_size=8),
        "llama_bias": dict(target_modules=["q_proj", "o_proj", "up_proj"], r=4, oft_block_size=0, bias="oft_only"),
        "gpt2": dict(target_modules=["wpe"], oft_block_size=8),   # its Conv1D layers are not OFT targets in PEFT
        "bert": dict(target_modules=["query", "value"], oft_block_size=8, use_cayley_neumann=False),
        "t5": dict(target_modules=["q", "v", "wo"], oft_block_size=8, coft=True, eps=0.05),
        # the 3x3 convs are left out: PEFT's OFT forward on k > 1 kernels does not survive a merge
        "conv": dict(target_modules=["head"], oft_block_size=4),
        "embedding": dict(target_modules=["emb", "lin0"], oft_block_size=4, block_share=True),
    }, second={"llama": dict(target_modules=["k_proj", "o_proj"], r=2, oft_block_size=0, num_cayley_neumann_terms=3),
               "llama_bias": dict(target_modules=["k_proj", "down_proj"], oft_block_size=4)}),   # PEFT: one bias adapter
]
