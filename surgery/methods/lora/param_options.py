"""LoraConfig options against parameter targets (target_parameters): the field's own check, and the options a
parameter target refuses, in PEFT's words first (its ParamWrapper raises them when it is built), then the field,
the value and what would work.

    dropout          acts on the input x, which cannot be factored out of W x for a parameter
    fan_in_fan_out   a parameter's layout is read from its shape (and its module's is_transposed)
    lora_bias        a parameter has no output of its own to add a bias to
    use_dora         DoRA needs the adapted layer's weight norm per output row
    init_lora_weights other than True / 'gaussian' / False: those inits read a base layer's weight
"""
from __future__ import annotations

from typing import Optional

from ...errors import ConfigError, ConfigTypeError

BASIC_INITS = (True, False, "gaussian")   # the inits that need no base weight (A and B alone)

# (field, PEFT's words, why, what is valid)
REFUSED_OPTIONS = (
    ("lora_dropout", "lora_dropout != 0", "dropout acts on the input x, which cannot be factored out of W x "
                                          "for a parameter", "lora_dropout=0.0"),
    ("fan_in_fan_out", "fan_in_fan_out", "the layout of a parameter target is read from its shape and module",
     "fan_in_fan_out=False"),
    ("lora_bias", "lora_bias=True", "a parameter target has no output of its own to add a bias to",
     "lora_bias=False"),
    ("use_dora", "use_dora=True", "DoRA needs the adapted layer's weight norm per output row", "use_dora=False"),
)


def check_target_parameters(owner: str, value) -> None:
    """The field alone: None or a list of 'module.param' names (PEFT's TypeError for a string, no regex)."""
    if value is None:
        return
    if isinstance(value, str):   # PEFT's words first
        raise ConfigTypeError(f"`target_parameters` must be a list of strings or None. ({owner}.target_parameters = "
                              f"{value!r}: regex matching is not supported for parameters; give a list of names, "
                              f"e.g. ['mlp.experts.gate_up_proj'])")
    if not isinstance(value, (list, tuple, set)) or not all(isinstance(v, str) for v in value):
        raise ConfigTypeError(f"{owner}.target_parameters = {value!r} has type {type(value).__name__}; expected a "
                              f"list of 'module.param' names (str) or None")
    empty = [v for v in value if not v.strip(".")]
    if empty:
        raise ConfigError(f"{owner}.target_parameters = {list(value)!r}: {empty[0]!r} names no parameter; give "
                          f"'module.param' names such as 'mlp.experts.down_proj'")


def option_refusal(config, key: str) -> Optional[str]:
    """Why `config` cannot adapt the parameter `key` (None: it can)."""
    targets = list(config.target_parameters or [])
    for field, words, why, valid in REFUSED_OPTIONS:
        value = getattr(config, field)
        if value:
            return (f"lora.ParamWrapper does not work with {words}. (LoraConfig.{field} = {value!r} with "
                    f"target_parameters = {targets!r}: {why}; set {valid}, or adapt modules with target_modules)")
    if config.init_lora_weights not in BASIC_INITS:
        return (f"LoraConfig.init_lora_weights = {config.init_lora_weights!r} with target_parameters = {targets!r}: "
                f"this init reads a base layer's weight, which a parameter target ({key!r}) does not have; valid "
                f"for parameter targets: True, 'gaussian', False")
    return None
