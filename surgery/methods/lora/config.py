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
from ...errors import UnsupportedOptionError

LORA_INERT_KEYS = {
    "alora_invocation_tokens": None, "arrow_config": None, "corda_config": None, "ensure_weight_tying": False,
    "eva_config": None, "kasa_config": None, "layer_replication": None, "loftq_config": {},
    "lora_ga_config": None, "megatron_config": None, "megatron_core": "megatron.core",
    "monteclora_config": None, "qalora_group_size": 16, "target_parameters": None,
    "trainable_token_indices": None, "use_bdlora": None, "use_qalora": False, "velora_config": None,
    "runtime_config": None,
}


# PEFT's data-driven or decomposition initialisations (init_lora_weights) that surgery does not implement yet.
_PEFT_INITS_NOT_SUPPORTED = ("eva", "olora", "pissa", "corda", "loftq", "orthogonal", "mica", "lora_ga")


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
    init_lora_weights: Union[bool, Literal["gaussian"]] = field(
        default=True, metadata={"help": "True: A kaiming, B zero; 'gaussian': A normal(1/r); False: no-op init."})
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
    # PEFT's LoRA options surgery does not implement yet: accepted and saved at their defaults only.
    alora_invocation_tokens: Optional[list[int]] = unsupported_field(None)
    arrow_config: Optional[Any] = unsupported_field(None)
    corda_config: Optional[Any] = unsupported_field(None)
    ensure_weight_tying: bool = unsupported_field(False)
    eva_config: Optional[Any] = unsupported_field(None)
    kasa_config: Optional[Any] = unsupported_field(None)
    layer_replication: Optional[list] = unsupported_field(None)
    loftq_config: Union[Any, dict] = unsupported_field({})
    lora_ga_config: Optional[Any] = unsupported_field(None)
    megatron_config: Optional[dict] = unsupported_field(None)
    megatron_core: Optional[str] = unsupported_field("megatron.core")
    monteclora_config: Optional[Any] = unsupported_field(None)
    qalora_group_size: int = unsupported_field(16)
    target_parameters: Optional[list[str]] = unsupported_field(None)
    trainable_token_indices: Optional[Any] = unsupported_field(None)
    use_bdlora: Optional[Any] = unsupported_field(None)
    use_qalora: bool = unsupported_field(False)
    velora_config: Optional[Any] = unsupported_field(None)

    _inert_keys = LORA_INERT_KEYS
    _legacy_keys = frozenset({"enable_lora", "merge_weights"})
    # target_types is resolved into target_modules before saving; runtime_config is run-time only (as PEFT)
    _unsaved_keys = ("target_types", "runtime_config")
    _method = PeftType.LORA

    def __post_init__(self) -> None:
        init = self.init_lora_weights
        if isinstance(init, str) and (init in _PEFT_INITS_NOT_SUPPORTED or init.startswith("pissa_niter_")):
            raise UnsupportedOptionError(f"LoraConfig.init_lora_weights = {init!r}: this PEFT initialisation is not "
                                         f"supported by surgery yet; supported: True, False, 'gaussian'")
        super().__post_init__()

    def validate(self) -> None:
        name = type(self).__name__
        check_range(name, "r", self.r, low=0, low_open=True)
        check_range(name, "lora_dropout", self.lora_dropout, low=0.0, high=1.0, what=" (a probability)")
        check_range(name, "lora_alpha", self.lora_alpha, low=0, low_open=True)
        check_targeting(self)
