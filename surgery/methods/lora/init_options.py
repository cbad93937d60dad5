"""The values LoraConfig.init_lora_weights takes, LoftQConfig, and their validation (PEFT's rules, checked when
the config is built so a bad value fails where it is written).

    True / False / "gaussian"      random factors (init.py)
    "pissa", "pissa_niter_<N>"     the top-r singular triplets of W (N >= 0 subspace iterations: fast SVD)
    "olora"                        the first r columns / rows of W's QR factors ("OLoRA" too, as PEFT)
    "orthogonal"                   orthogonal random A and B with B A = 0 (r even)
    "loftq"                        alternate quantizing W and SVD of the quantization error (loftq_config)
    "corda"                        the SVD of W C, C the covariance of each layer's inputs (preprocess_corda)
    "eva"                          A from the principal components of each layer's inputs (eva.py, eva_config)
"""
from __future__ import annotations

import os
import re
import typing
import warnings
import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

from ...config.validation import check_type
from ...errors import ConfigError, PeftWarning, UnsupportedOptionError, did_you_mean

SUPPORTED_TEXT = ("True, False, 'gaussian', 'pissa', 'pissa_niter_<N>' (N >= 0 subspace iterations), 'olora', "
                  "'orthogonal', 'loftq', 'corda', 'eva'")
_NAMED = ("gaussian", "pissa", "olora", "orthogonal", "loftq", "corda", "eva")
# PEFT's initialisations surgery does not implement yet (data-driven, or variants with their own layers).
NOT_SUPPORTED = ("mica", "lora_ga")
_NITER = re.compile(r"pissa_niter_(\d+)")
# The inits that decompose W and replace it with a residual: what save-time conversion undoes.
RESIDUAL_INITS = ("pissa", "olora", "corda")


@dataclass
class LoftQConfig:
    """LoftQ's settings (PEFT's sub-config of LoraConfig.loftq_config, stored there as a dict)."""

    loftq_bits: int = field(default=4, metadata={"help": "Quantization bits for LoftQ"})
    loftq_iter: int = field(default=1, metadata={"help": "Alternating iterations for LoftQ"})


@dataclass
class CordaConfig:
    """CorDA's settings (PEFT's sub-config of LoraConfig.corda_config); preprocess_corda reads them."""

    cache_file: Optional[str] = field(default=None, metadata={"help": (
        "File to store the SVD cache (the cropped U, S, V per layer), reused when it exists")})
    covariance_file: Optional[str] = field(default=None, metadata={"help": (
        "File to store the input covariance matrices, reused (for other ranks) when it exists")})
    corda_method: Literal["ipm", "kpm"] = field(default="ipm", metadata={"help": (
        "'ipm' (instruction-previewed: the top-r components train) or 'kpm' (knowledge-preserved: the last r)")})
    verbose: bool = field(default=False, metadata={"help": "If true, prints the progress of CorDA initialization."})
    use_float16_for_covariance: bool = field(default=False, metadata={"help": (
        "If true, uses float16 for the covariance matrix (half the memory, less stable)")})
    prune_temporary_fields: bool = field(default=True, metadata={"help": (
        "If true, temporary fields generated in CorDA preprocessing will be pruned.")})


def init_kind(init) -> Optional[str]:
    """'pissa' / 'olora' / 'orthogonal' / 'loftq' for an init that reads the base weight, else None."""
    if not isinstance(init, str):
        return None
    if init == "pissa" or _NITER.fullmatch(init):
        return "pissa"
    if init.lower() == "olora":
        return "olora"
    return init if init in ("orthogonal", "loftq", "corda") else None


def pissa_niter(init: str) -> Optional[int]:
    """N of 'pissa_niter_N' (fast SVD with N subspace iterations); None for the exact SVD ('pissa')."""
    match = _NITER.fullmatch(init)
    return int(match.group(1)) if match else None


def check_init_lora_weights(owner: str, value) -> None:
    """Refuse a value of init_lora_weights that is neither a bool nor one of the supported names."""
    if isinstance(value, bool):
        return
    where = f"{owner}.init_lora_weights = {value!r}"
    if not isinstance(value, str):
        raise ConfigError(f"{where} has type {type(value).__name__}; expected a bool or one of: {SUPPORTED_TEXT}")
    if value in NOT_SUPPORTED:
        raise UnsupportedOptionError(f"{where}: this PEFT initialisation is not supported by surgery yet; "
                                     f"supported: {SUPPORTED_TEXT}")
    if value in _NAMED or init_kind(value) is not None:
        return
    if value.startswith("pissa_niter_"):
        raise ConfigError(f"{where} is not valid: after 'pissa_niter_' comes the number of subspace iterations of "
                          f"the fast SVD, a non-negative integer (e.g. 'pissa_niter_16'); or use 'pissa' for the "
                          f"exact SVD")
    raise ConfigError(f"{where} is not valid{did_you_mean(value, _NAMED)}; valid: {SUPPORTED_TEXT}")


def settle_loftq_config(config) -> None:
    """PEFT's handling of loftq_config: required (and stored as a dict) with init 'loftq', dropped with a warning
    otherwise. Unknown keys and values LoftQ cannot use are refused here, not at the first layer."""
    owner = type(config).__name__
    value = config.loftq_config
    if isinstance(value, LoftQConfig):
        value = dict(vars(value))
    elif value is None:
        value = {}
    elif not isinstance(value, dict):
        raise ConfigError(f"{owner}.loftq_config = {value!r} has type {type(value).__name__}; expected a LoftQConfig "
                          f"or a dict such as {{'loftq_bits': 4, 'loftq_iter': 1}}")
    if config.init_lora_weights != "loftq":
        if value:
            warnings.warn("`loftq_config` specified but will be ignored when `init_lora_weights` is not 'loftq'.",
                          PeftWarning, stacklevel=4)
        config.loftq_config = {}
        return
    if not value:
        raise ConfigError(f"`loftq_config` must be specified when `init_lora_weights` is 'loftq'. ({owner}."
                          f"loftq_config = {config.loftq_config!r}; pass LoftQConfig() or {{'loftq_bits': 4, "
                          f"'loftq_iter': 1}})")
    known = [f for f in vars(LoftQConfig())]
    for key in value:
        if key not in known:
            raise ConfigError(f"{owner}.loftq_config has the unknown key {key!r}{did_you_mean(str(key), known)}; "
                              f"valid keys: {', '.join(known)}")
    settled = {**vars(LoftQConfig()), **value}
    bits, iters = settled["loftq_bits"], settled["loftq_iter"]
    if isinstance(bits, bool) or bits not in (4, 8):
        raise ConfigError(f"{owner}.loftq_config['loftq_bits'] = {bits!r} is not valid: LoftQ quantizes to 4 bits "
                          f"(nf4) or 8 bits (int8); valid: 4, 8")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters <= 0:
        raise ConfigError(f"{owner}.loftq_config['loftq_iter'] = {iters!r} is not valid: the number of alternating "
                          f"iterations must be an integer > 0")
    config.loftq_config = settled


def check_init_combinations(config) -> None:
    """PEFT's checks of init_lora_weights against the other fields."""
    init = config.init_lora_weights
    if config.lora_bias and init not in (True, False):
        raise ConfigError(f"The argument lora_bias=True is only supported with init_lora_weights=True or False, got "
                          f"init_lora_weights={init} instead.")
    patterns = config.rank_pattern or config.alpha_pattern
    if config.use_rslora and patterns and init_kind(init) in RESIDUAL_INITS:
        warnings.warn("Using Rank-Stabilized LoRA with rank_pattern/alpha_pattern and post-training conversion of "
                      "modified base weights PiSSA/CorDA/OLoRA/LoRA-GA means that you won't be able to pass "
                      "`path_initial_model_for_weight_conversion` to `save_pretrained` to restore the initial values "
                      "of the base weights; if you intend to do this, please ensure not to use rslora or "
                      "rank_pattern/alpha_pattern.", PeftWarning, stacklevel=4)


_MIXED = {"pissa": ("PiSSA", "pissa_finetuning#convert-pissa-to-lora"),
          "corda": ("CorDA", "corda_finetuning#convert-corda-to-lora"),
          "olora": ("OLoRA", "olora_finetuning#olora-and-lora")}


def warn_if_mixed_with_a_rewritten_base(configs) -> None:
    """PEFT's warning when an adapter is loaded next to others and one of them is PiSSA, CorDA or OLoRA (exactly those
    names, as PEFT checks): that adapter changed the base weights the others were trained on."""
    if len(configs) < 2:
        return
    inits = [getattr(c, "init_lora_weights", None) for c in configs]
    for init, (name, anchor) in _MIXED.items():
        if init in inits:
            warnings.warn(f"{name} changes the base weights of the model and should thus not be used with other "
                          f"adapters. Consider converting the {name} adapter into a normal LoRA adapter: "
                          f"https://github.com/huggingface/peft/tree/main/examples/{anchor}", PeftWarning,
                          stacklevel=4)
            return


def settle_corda_config(config) -> None:
    """PEFT's handling of corda_config: a CordaConfig (a dict when read from a file), the default one with init
    'corda', kept with a warning otherwise. Unknown keys are dropped with a warning (a newer PEFT's)."""
    owner = type(config).__name__
    value = config.corda_config
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(CordaConfig)}
        unknown = sorted(repr(k) for k in value if k not in known)
        if unknown:
            warnings.warn(f"{owner}.corda_config: unknown keys {', '.join(unknown)} are ignored (valid: "
                          f"{', '.join(sorted(known))})", PeftWarning, stacklevel=4)
        value = CordaConfig(**{k: v for k, v in value.items() if k in known})
    elif value is not None and not isinstance(value, CordaConfig):
        raise ConfigError(f"{owner}.corda_config = {value!r} has type {type(value).__name__}; expected a CordaConfig, "
                          f"its dict, or None")
    if value is not None and value.corda_method not in ("ipm", "kpm"):
        raise ConfigError(f"{owner}.corda_config.corda_method = {value.corda_method!r} is not valid; valid: 'ipm' "
                          f"(instruction-previewed), 'kpm' (knowledge-preserved)")
    if value is not None:
        for key in ("cache_file", "covariance_file"):   # paths may be PathLike (PEFT's tests pass pathlib.Path)
            if isinstance(getattr(value, key), os.PathLike):
                setattr(value, key, os.fspath(getattr(value, key)))
        hints = typing.get_type_hints(CordaConfig)
        for f in dataclasses.fields(CordaConfig):
            check_type(f"{owner}.corda_config", f.name, getattr(value, f.name), hints[f.name])
    if config.init_lora_weights == "corda" and value is None:
        warnings.warn("`init_lora_weights` is 'corda' but `corda_config` is not specified. Using default CorDA "
                      "config.", PeftWarning, stacklevel=4)
        value = CordaConfig()
    elif config.init_lora_weights != "corda" and value is not None:
        warnings.warn("`corda_config` specified but will be ignored when `init_lora_weights` is not 'corda'.",
                      PeftWarning, stacklevel=4)
    config.corda_config = value
