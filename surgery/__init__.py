"""surgery: parameter-efficient fine-tuning as model surgery — plan, audit, then rewrite.

The public API mirrors Hugging Face PEFT's (read peft.X as surgery.X). Each method's own names (its config
class, tuner class, ...) come from its package under surgery/methods/, gathered through the registry.
"""
from .version import __version__
from .api import apply_rules, plan
from .checkpoint.state import get_peft_model_state_dict, set_peft_model_state_dict
from .config.base import PeftConfig
from .config.enums import PeftType, TaskType
from .config.loading import get_peft_config, load_config
from .errors import SurgeryError
from .facade.peft_model import PeftModel
from .facade.tasks import (
    MODEL_TYPE_TO_PEFT_MODEL_MAPPING,
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForQuestionAnswering,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
    get_peft_model,
)
from .integrations.allocator import tune_cpu_allocator
from .methods.registry import public_names as _method_names
from .plan.model import Plan, Rewrite

_METHOD_NAMES = _method_names()
globals().update(_METHOD_NAMES)

__all__ = sorted([
    "MODEL_TYPE_TO_PEFT_MODEL_MAPPING", "PeftConfig", "PeftModel",
    "PeftModelForCausalLM", "PeftModelForFeatureExtraction", "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM", "PeftModelForSequenceClassification", "PeftModelForTokenClassification",
    "PeftType", "Plan", "Rewrite", "SurgeryError", "TaskType", "apply_rules", "get_peft_config",
    "get_peft_model", "get_peft_model_state_dict", "load_config", "plan", "set_peft_model_state_dict",
    "tune_cpu_allocator", *_METHOD_NAMES,
])
