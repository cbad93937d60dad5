"""The registry entries of prompt tuning, P-tuning and prefix tuning: state injections, not module wraps."""
from __future__ import annotations

from ...config.enums import PeftType
from ...facade.tuner import TunerModel
from ..spec import MethodSpec
from .config import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig
from .plan import plan_prompt
from .state import PromptState

FROZEN = "it stores the prompt encoder's output, not the encoder"
REFUSAL = "prompt learning adds inputs, not weights; there is nothing to merge (use unload() to get the base model back)"


def _spec(peft_type: PeftType, config_cls: type) -> MethodSpec:
    # PEFT's base_model is the transformer itself for prompt learning: no method-named tuner class
    return MethodSpec(peft_type=peft_type, config_cls=config_cls, tuner_cls=TunerModel, planner=plan_prompt,
                      injector=PromptState, mergeable=False, merge_refusal=REFUSAL, frozen_on_load=FROZEN)


PROMPT_TUNING = _spec(PeftType.PROMPT_TUNING, PromptTuningConfig)
P_TUNING = _spec(PeftType.P_TUNING, PromptEncoderConfig)
PREFIX_TUNING = _spec(PeftType.PREFIX_TUNING, PrefixTuningConfig)
