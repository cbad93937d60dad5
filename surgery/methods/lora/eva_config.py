"""EvaConfig (PEFT's sub-config of LoraConfig.eva_config) and its validation.

EVA (Paischer et al. 2024, Explained Variance Adaptation) sets lora_A to the top right-singular vectors of each
layer's inputs, found by an incremental SVD over calibration batches (eva.py):

    rho     the most rank one layer may get after redistribution: round(r * rho) (rho >= 1; rho = 1: none)
    tau     the SVD stops for a layer once the cosine similarity of its components between two batches is >= tau
    use_label_mask, label_mask_value   tokens whose label is label_mask_value are left out of the SVD
    whiten  lora_A = V_k^T / sqrt(S_k) instead of V_k^T
    adjust_scaling_factors   alpha scales with the new rank (alpha' = alpha r' / r), so alpha' / r' stays alpha / r

PEFT checks rho >= 1 and 0 <= tau <= 1 on construction; surgery also refuses NaN and values of the wrong type, and
checks again when EVA runs (fields may be set after construction, as PEFT's own tests do).
"""
from __future__ import annotations

import dataclasses
import types
import warnings
from dataclasses import dataclass, field

from ...errors import ConfigError, ConfigTypeError, PeftWarning, did_you_mean


@dataclass
class EvaConfig:
    """EVA's settings (PEFT's EvaConfig); LoraConfig(init_lora_weights="eva", eva_config=EvaConfig(...))."""

    rho: float = field(default=2.0, metadata={"help": "Rho value for EVA redistribution"})
    tau: float = field(default=0.99, metadata={"help": "Cosine similarity threshold for early stopping"})
    use_label_mask: bool = field(default=True, metadata={"help": "Use label mask for EVA initialization"})
    label_mask_value: int = field(
        default=-100, metadata={"help": "if use_label_mask=True the value to look for to mask out ignored tokens"})
    whiten: bool = field(default=False, metadata={"help": "Apply whitening to singular vectors"})
    adjust_scaling_factors: bool = field(
        default=True, metadata={"help": "Adjust LoRA scaling factors after the rank redistribution"})

    def __post_init__(self):
        check_eva_config(self)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_eva_config(settings: EvaConfig, owner: str = "EvaConfig") -> None:
    """Refuse values EVA cannot run with; PEFT's words first (code matches them), then field, value and range."""
    for key in ("rho", "tau"):
        value = getattr(settings, key)
        if not _is_number(value):
            raise ConfigTypeError(f"{owner}.{key} = {value!r} has type {type(value).__name__}; expected a number")
    if not settings.rho >= 1.0:   # also NaN
        raise ConfigError(f"`rho` must be >= 1.0 ({owner}.rho = {settings.rho!r}: a layer may get at most "
                          f"round(r * rho) ranks, and rho = 1.0 keeps every layer at r; valid: a number >= 1.0)")
    if not 0.0 <= settings.tau <= 1.0:
        raise ConfigError(f"`tau` must be between 0.0 and 1.0. ({owner}.tau = {settings.tau!r}: the cosine "
                          f"similarity a layer's components must reach between two SVD steps to count as "
                          f"converged; valid: 0.0 <= tau <= 1.0, e.g. 0.99)")
    for key in ("use_label_mask", "whiten", "adjust_scaling_factors"):
        value = getattr(settings, key)
        if not isinstance(value, bool):
            raise ConfigTypeError(f"{owner}.{key} = {value!r} has type {type(value).__name__}; expected a bool")
    value = settings.label_mask_value
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigTypeError(f"{owner}.label_mask_value = {value!r} has type {type(value).__name__}; expected an "
                              f"int (the label of ignored tokens, -100 in transformers)")


def settle_eva_config(config) -> None:
    """PEFT's handling of eva_config: an EvaConfig (a dict when read from a file), the default one with init
    'eva' (with PEFT's warning), kept with a warning otherwise. Unknown keys of a dict are dropped with a
    warning (a newer PEFT's)."""
    owner = f"{type(config).__name__}.eva_config"
    value = config.eva_config
    if isinstance(value, dict):
        known = [f.name for f in dataclasses.fields(EvaConfig)]
        unknown = sorted((k for k in value if k not in known), key=str)
        if unknown:
            named = ", ".join(f"{k!r}{did_you_mean(str(k), known)}" for k in unknown)
            warnings.warn(f"{owner}: unknown keys {named} are ignored (valid: {', '.join(known)})", PeftWarning,
                          stacklevel=4)
        given = {k: v for k, v in value.items() if k in known}
        defaults = {f.name: f.default for f in dataclasses.fields(EvaConfig)}
        check_eva_config(types.SimpleNamespace(**{**defaults, **given}), owner)   # errors name this field
        value = EvaConfig(**given)
    elif value is not None and not isinstance(value, EvaConfig):
        raise ConfigTypeError(f"`EvaConfig` must be a `EvaConfig`, a dict, or None. ({owner} = {value!r} has type "
                              f"{type(value).__name__})")
    if value is not None:
        check_eva_config(value, owner)
    if config.init_lora_weights == "eva" and value is None:
        warnings.warn("`init_lora_weights` is 'eva' but `eva_config` is not specified. Using default EVA config.",
                      PeftWarning, stacklevel=4)
        value = EvaConfig()
    elif config.init_lora_weights != "eva" and value is not None:
        warnings.warn("`eva_config` specified but will be ignored when `init_lora_weights` is not 'eva'.",
                      PeftWarning, stacklevel=4)
    config.eva_config = value


def capped_rho(rho: float, r: int, largest_dim: int) -> float:
    """PEFT's cap for very large rho (> 1000, e.g. inf): no layer can use more than largest_dim // r times r."""
    return min(rho, largest_dim // r) if rho > 1000 else rho

