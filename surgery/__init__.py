"""surgery: parameter-efficient fine-tuning as model surgery — plan, audit, then rewrite.

The public API mirrors Hugging Face PEFT's (read peft.X as surgery.X). Each method's own names (its config
class, tuner class, ...) come from its package under surgery/methods/, gathered through the registry.
"""
from .version import __version__
from .api import apply_rules, inject_adapter_in_model, plan
from .checkpoint.base_state import get_base_model_state_dict, set_base_model_state_dict
from .checkpoint.state import get_peft_model_state_dict, set_peft_model_state_dict
from .config.base import PeftConfig
from .config.enums import PeftType, TaskType
from .config.loading import get_peft_config, load_config
from .errors import NoMatchingPeftModuleError, PeftError, PeftWarning, SurgeryError
from . import functional
from .functional import cast_adapter_dtype, delete_adapter, set_adapter, set_requires_grad
from .checkpoint.weights import load_peft_weights
from .facade.auto import (AutoPeftModel, AutoPeftModelForCausalLM, AutoPeftModelForFeatureExtraction,
                          AutoPeftModelForQuestionAnswering, AutoPeftModelForSeq2SeqLM,
                          AutoPeftModelForSequenceClassification, AutoPeftModelForTokenClassification)
from .facade.peft_model import PeftModel
from .facade.status import TunerLayerStatus, TunerModelStatus, get_layer_status, get_model_status
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
from .integrations.kbit import prepare_model_for_kbit_training
from .methods.registry import peft_type_mappings as _peft_type_mappings
from .methods.registry import public_names as _method_names
from .plan.model import Plan, Rewrite
from .rewrite.dtypes import cast_mixed_precision_params
from .tasks import shift_tokens_right

_METHOD_NAMES = _method_names()
globals().update(_METHOD_NAMES)
_MAPPINGS = _peft_type_mappings()
PEFT_TYPE_TO_CONFIG_MAPPING = _MAPPINGS["PEFT_TYPE_TO_CONFIG_MAPPING"]
PEFT_TYPE_TO_TUNER_MAPPING = _MAPPINGS["PEFT_TYPE_TO_TUNER_MAPPING"]
PEFT_TYPE_TO_PREFIX_MAPPING = _MAPPINGS["PEFT_TYPE_TO_PREFIX_MAPPING"]

__all__ = sorted([
    "AutoPeftModel", "AutoPeftModelForCausalLM", "AutoPeftModelForFeatureExtraction",
    "AutoPeftModelForQuestionAnswering", "AutoPeftModelForSeq2SeqLM", "AutoPeftModelForSequenceClassification",
    "AutoPeftModelForTokenClassification", "cast_mixed_precision_params", "load_peft_weights",
    "shift_tokens_right", "cast_adapter_dtype", "delete_adapter", "set_adapter", "set_requires_grad",
    "MODEL_TYPE_TO_PEFT_MODEL_MAPPING", "NoMatchingPeftModuleError", "PEFT_TYPE_TO_CONFIG_MAPPING",
    "PEFT_TYPE_TO_PREFIX_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PeftConfig", "PeftError", "PeftModel", "PeftWarning",
    "TunerLayerStatus", "TunerModelStatus", "get_base_model_state_dict", "get_layer_status", "get_model_status",
    "inject_adapter_in_model", "prepare_model_for_kbit_training", "set_base_model_state_dict",
    "PeftModelForCausalLM", "PeftModelForFeatureExtraction", "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM", "PeftModelForSequenceClassification", "PeftModelForTokenClassification",
    "PeftType", "Plan", "Rewrite", "SurgeryError", "TaskType", "apply_rules", "get_peft_config",
    "get_peft_model", "get_peft_model_state_dict", "load_config", "plan", "set_peft_model_state_dict",
    "tune_cpu_allocator", *_METHOD_NAMES,
])
