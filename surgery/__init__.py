"""surgery: parameter-efficient fine-tuning as model surgery — plan, audit, then rewrite.

The public API mirrors Hugging Face PEFT's (read peft.X as surgery.X).
"""
__version__ = "0.1.0"

from .api import apply_rules, plan
from .checkpoint.state import get_peft_model_state_dict, set_peft_model_state_dict
from .config.base import PeftConfig
from .config.enums import PeftType, TaskType
from .config.loading import get_peft_config, load_config
from .config.lora import LoraConfig
from .config.prompt import (
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
    PromptLearningConfig,
    PromptTuningConfig,
    PromptTuningInit,
)
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
from .facade.tuner import LoraModel
from .integrations.allocator import tune_cpu_allocator
from .methods.prompt.embedding import PromptEmbedding
from .methods.prompt.encoder import PromptEncoder
from .methods.prompt.prefix import PrefixEncoder
from .plan.model import Plan, Rewrite

__all__ = [
    "LoraConfig", "LoraModel", "MODEL_TYPE_TO_PEFT_MODEL_MAPPING", "PeftConfig", "PeftModel",
    "PeftModelForCausalLM", "PeftModelForFeatureExtraction", "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM", "PeftModelForSequenceClassification", "PeftModelForTokenClassification",
    "PeftType", "Plan", "PrefixEncoder", "PrefixTuningConfig", "PromptEmbedding", "PromptEncoder",
    "PromptEncoderConfig", "PromptEncoderReparameterizationType", "PromptLearningConfig", "PromptTuningConfig",
    "PromptTuningInit", "Rewrite", "SurgeryError", "TaskType", "apply_rules", "get_peft_config",
    "get_peft_model", "get_peft_model_state_dict", "load_config", "plan", "set_peft_model_state_dict",
    "tune_cpu_allocator",
]
