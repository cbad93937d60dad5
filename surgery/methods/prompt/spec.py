"""The registry entries of prompt tuning, P-tuning and prefix tuning (state injections, not module wraps)."""
from __future__ import annotations

from ...config.enums import PeftType
from ...config.prompt import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig
from ..registry import MethodSpec
from .plan import plan_prompt
from .state import state_entries


def _spec(peft_type: PeftType, config_cls: type) -> MethodSpec:
    return MethodSpec(peft_type=peft_type, config_cls=config_cls, is_prompt_learning=True,
                      planner=plan_prompt, state_entries=state_entries)


PROMPT_TUNING = _spec(PeftType.PROMPT_TUNING, PromptTuningConfig)
P_TUNING = _spec(PeftType.P_TUNING, PromptEncoderConfig)
PREFIX_TUNING = _spec(PeftType.PREFIX_TUNING, PrefixTuningConfig)
