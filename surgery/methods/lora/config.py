"""LoraConfig: PEFT's LoRA fields and defaults, validated on construction.

surgery adds one key, `target_types` (match modules by class name); it is resolved into plain
`target_modules` names before anything is saved, so saved configs stay PEFT's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from ...config.base import PeftConfig, unsupported_field
from ...config.enums import PeftType
from ...config.targets import check_targeting, targeting_field
from ...config.validation import check_range
from ...errors import ConfigError
from .param_options import check_target_parameters
from .init_options import (CordaConfig, LoftQConfig, check_init_combinations, check_init_lora_weights,
                           settle_corda_config, settle_loftq_config)
from .option_checks import check_layer_replication, check_trainable_token_indices
from .eva_config import EvaConfig, settle_eva_config

LORA_INERT_KEYS = {
    "alora_invocation_tokens": None, "arrow_config": None,
    "kasa_config": None,
    "lora_ga_config": None, "megatron_config": None, "megatron_core": "megatron.core",
    "monteclora_config": None, "qalora_group_size": 16,
    "use_bdlora": None, "use_qalora": False, "velora_config": None,
}


@dataclass
class LoraRuntimeConfig:
    """PEFT's run-time LoRA options, never saved. ephemeral_gpu_offload: PEFT moves CPU-offloaded weights to the
    GPU for a moment to initialise DoRA faster; the result is the same, and surgery computes DoRA's norm where
    the weights are (no dense temporary), so here the flag only records the request."""

    ephemeral_gpu_offload: bool = False


@dataclass
class LoraConfig(PeftConfig):
    r: int = field(default=8, metadata={"help": "LoRA rank (attention dimension)."})
    target_modules: Optional[Union[list[str], str]] = targeting_field("target_modules")
    exclude_modules: Optional[Union[list[str], str]] = targeting_field("exclude_modules")
    lora_alpha: Union[int, float] = field(default=8, metadata={"help": "Scaling numerator: alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    fan_in_fan_out: bool = field(default=False, metadata={"help": "Base weight stored (in, out), as GPT-2's Conv1D."})
    bias: Literal["none", "all", "lora_only"] = field(default="none", metadata={"help": "Which biases train."})
    use_rslora: bool = field(default=False, metadata={"help": "Scale by alpha / sqrt(r) (rank-stabilised)."})
    modules_to_save: Optional[list[str]] = targeting_field("modules_to_save")
    # checked by init_options.py (a Literal cannot say "pissa_niter_<N>"); PEFT's "mica" and "lora_ga" are
    # refused there as not supported yet
    init_lora_weights: Union[bool, Literal["gaussian", "eva", "pissa", "pissa_niter_[number of iters]", "olora",
                                           "orthogonal", "loftq", "corda"]] = field(
        default=True, metadata={"unchecked": True, "help": (
            "True: A kaiming, B zero; 'gaussian': A normal(1/r); False: no-op init (debugging); 'pissa': A, B from "
            "the top-r singular vectors of W, W replaced by the residual; 'pissa_niter_N': the same by fast SVD "
            "with N subspace iterations; 'olora': A, B from W's QR, W replaced by the residual; 'orthogonal': "
            "orthogonal A and B with B A = 0 (r even); 'loftq': LoftQ (W quantized, A, B from the quantization "
            "error; needs loftq_config); 'corda': CorDA (A, B from the SVD of W times the covariance of the "
            "layer's inputs; preprocess_corda first); 'eva': EVA (A from the principal components of each layer's "
            "inputs, ranks redistributed by explained variance; initialize_lora_eva_weights after get_peft_model)")})
    layers_to_transform: Optional[Union[list[int], int]] = targeting_field("layers_to_transform")
    layers_pattern: Optional[Union[list[str], str]] = targeting_field("layers_pattern")
    rank_pattern: Optional[dict[str, int]] = field(
        default_factory=dict, metadata={"help": "Per-module rank overrides: {name or regex: r}."})
    alpha_pattern: Optional[dict[str, Union[int, float]]] = field(
        default_factory=dict, metadata={"help": "Per-module alpha overrides: {name or regex: alpha}."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})
    lora_bias: bool = field(default=False, metadata={"help": "Give lora_B a trainable bias."})
    target_types: Optional[list[str]] = field(
        default=None, metadata={"help": "surgery extension: adapt modules of these class names."})
    loftq_config: Union[LoftQConfig, dict] = field(default_factory=dict, metadata={"unchecked": True, "help": (
        "LoftQ's settings (LoftQConfig or its dict) with init_lora_weights='loftq'; ignored (with a warning) "
        "otherwise")})
    corda_config: Optional[CordaConfig] = field(default=None, metadata={"unchecked": True, "help": (
        "CorDA's settings with init_lora_weights='corda' (call preprocess_corda(model, config, run_model) first); "
        "the default CordaConfig() when not given")})
    eva_config: Optional[EvaConfig] = field(default=None, metadata={"unchecked": True, "help": (
        "EVA's settings with init_lora_weights='eva' (then initialize_lora_eva_weights(model, dataloader)); the "
        "default EvaConfig() when not given")})
    # checked by option_checks.py (clear messages for shapes an annotation cannot state); the model-dependent checks
    # (ids within the embedding, ranges within the layer count) are the plan's
    trainable_token_indices: Optional[Union[list[int], dict[str, list[int]]]] = field(
        default=None, metadata={"unchecked": True, "help": (
            "Also train these rows (token ids) of the input embedding: a list of ids, or {module name: ids} for "
            "other embeddings (e.g. {'embed_tokens': [0, 1]}); only the rows are saved. Heads tied to the "
            "embedding follow its rows")})
    layer_replication: Optional[list[tuple[int, int]]] = field(
        default=None, metadata={"unchecked": True, "help": (
            "Stack the base model's decoder layers by these [start, end) ranges before adapting (Llama, Bert or "
            "Falcon layouts): [[0, 4], [2, 5]] turns layers 0-4 into 0,1,2,3,2,3,4. Replicas share the base "
            "weights; each gets its own LoRA")})
    ensure_weight_tying: bool = field(default=False, metadata={"help": (
        "Keep tied embeddings tied (tie_word_embeddings models): when modules_to_save, target_modules or "
        "trainable_token_indices name embed_tokens or lm_head, the other one shares the same trained copy, adapter "
        "or rows, through training, saving and merging")})
    # checked by param_options.py (PEFT's TypeError for a string); the model-dependent checks are the plan's
    target_parameters: Optional[list[str]] = field(default=None, metadata={"unchecked": True, "help": (
        "Adapt these nn.Parameters ('module.param' names, exact or '.'-suffix, as target_modules) instead of "
        "modules: e.g. ['mlp.experts.gate_up_proj', 'mlp.experts.down_proj'] for MoE experts stored as fused "
        "3-D parameters (one rank-r LoRA per expert); 2-D and 3-D parameters only")})
    # PEFT's LoRA options surgery does not implement yet: accepted and saved at their defaults only.
    alora_invocation_tokens: Optional[list[int]] = unsupported_field(None)
    arrow_config: Optional[Any] = unsupported_field(None)
    kasa_config: Optional[Any] = unsupported_field(None)
    lora_ga_config: Optional[Any] = unsupported_field(None)
    megatron_config: Optional[dict] = unsupported_field(None)
    megatron_core: Optional[str] = unsupported_field("megatron.core")
    monteclora_config: Optional[Any] = unsupported_field(None)
    qalora_group_size: int = unsupported_field(16)
    use_bdlora: Optional[Any] = unsupported_field(None)
    use_qalora: bool = unsupported_field(False)
    velora_config: Optional[Any] = unsupported_field(None)
    runtime_config: LoraRuntimeConfig = field(
        default_factory=LoraRuntimeConfig, metadata={"unchecked": True, "help": "Run-time options (not saved)."})

    _inert_keys = LORA_INERT_KEYS
    _legacy_keys = frozenset({"enable_lora", "merge_weights"})
    # target_types is resolved into target_modules before saving; runtime_config is run-time only (as PEFT)
    _unsaved_keys = ("target_types", "runtime_config")
    _method = PeftType.LORA

    def validate(self) -> None:
        name = type(self).__name__
        if isinstance(self.runtime_config, dict):
            unknown = sorted(set(self.runtime_config) - {"ephemeral_gpu_offload"})
            if unknown:
                raise ConfigError(f"{name}.runtime_config has unknown key(s) {unknown}; valid: ephemeral_gpu_offload")
            self.runtime_config = LoraRuntimeConfig(**self.runtime_config)
        elif self.runtime_config is None:
            self.runtime_config = LoraRuntimeConfig()
        if not isinstance(self.runtime_config, LoraRuntimeConfig) or \
                not isinstance(self.runtime_config.ephemeral_gpu_offload, bool):
            raise ConfigError(f"{name}.runtime_config = {self.runtime_config!r}: expected "
                              f"LoraRuntimeConfig(ephemeral_gpu_offload=<bool>) or such a dict")
        check_target_parameters(name, self.target_parameters)   # first, as PEFT (its TypeError for a string)
        check_init_lora_weights(name, self.init_lora_weights)
        settle_loftq_config(self)
        settle_corda_config(self)
        settle_eva_config(self)
        check_init_combinations(self)
        check_range(name, "r", self.r, low=0, low_open=True)
        check_range(name, "lora_dropout", self.lora_dropout, low=0.0, high=1.0, what=" (a probability)")
        check_range(name, "lora_alpha", self.lora_alpha, low=0, low_open=True)
        check_targeting(self)
        check_trainable_token_indices(name, self.trainable_token_indices)
        check_layer_replication(name, self.layer_replication)
        if self.ensure_weight_tying:   # PEFT's attributes, filled when the adapter is planned (weight_tying.py)
            self.modules_to_tie = None
            self.target_modules_to_tie = None
