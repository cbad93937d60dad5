"""The six task classes: one shared implementation, each differing only in data (heads to save, inputs).

PEFT keeps a near-copy of forward/generate per task; here a class is a name, a docstring and the heads
that train in full (modules_to_save), e.g. the classifier for SEQ_CLS.
"""
from __future__ import annotations

from typing import Optional

from ..config.base import PeftConfig
from ..config.enums import TaskType
from ..errors import ConfigError
from .peft_model import PeftModel



def _task_class(name: str, doc: str, heads: tuple[str, ...] = ()):
    return type(name, (PeftModel,), {"__doc__": doc, "default_modules_to_save": heads, "__module__": __name__})


class _ClassifierMixin:
    @property
    def cls_layer_name(self) -> Optional[str]:
        model = self.get_base_model()
        return next((name for name in self.default_modules_to_save if hasattr(model, name)), None)


PeftModelForSequenceClassification = type(
    "PeftModelForSequenceClassification", (_ClassifierMixin, PeftModel),
    {"__doc__": "Peft model for sequence classification tasks.", "__module__": __name__,
     "default_modules_to_save": ("classifier", "score")})
PeftModelForTokenClassification = type(
    "PeftModelForTokenClassification", (_ClassifierMixin, PeftModel),
    {"__doc__": "Peft model for token classification tasks.", "__module__": __name__,
     "default_modules_to_save": ("classifier", "score")})
PeftModelForQuestionAnswering = type(
    "PeftModelForQuestionAnswering", (_ClassifierMixin, PeftModel),
    {"__doc__": "Peft model for extractive question answering.", "__module__": __name__,
     "default_modules_to_save": ("qa_outputs",)})
PeftModelForCausalLM = _task_class("PeftModelForCausalLM", "Peft model for causal language modeling.")
PeftModelForSeq2SeqLM = _task_class("PeftModelForSeq2SeqLM", "Peft model for sequence-to-sequence language modeling.")
PeftModelForFeatureExtraction = _task_class(
    "PeftModelForFeatureExtraction", "Peft model for extracting features/embeddings from transformer models.")

MODEL_TYPE_TO_PEFT_MODEL_MAPPING = {
    TaskType.SEQ_CLS: PeftModelForSequenceClassification,
    TaskType.SEQ_2_SEQ_LM: PeftModelForSeq2SeqLM,
    TaskType.CAUSAL_LM: PeftModelForCausalLM,
    TaskType.TOKEN_CLS: PeftModelForTokenClassification,
    TaskType.QUESTION_ANS: PeftModelForQuestionAnswering,
    TaskType.FEATURE_EXTRACTION: PeftModelForFeatureExtraction,
}


def class_for_task(task_type) -> type:
    if task_type is None:
        return PeftModel
    try:
        return MODEL_TYPE_TO_PEFT_MODEL_MAPPING[TaskType(task_type)]
    except ValueError:
        raise ConfigError(f"task_type = {task_type!r} is not valid; valid: "
                          f"{', '.join(t.value for t in TaskType)}") from None


def get_peft_model(model, peft_config: PeftConfig, adapter_name: str = "default", mixed: bool = False,
                   autocast_adapter_dtype: bool = True, revision: Optional[str] = None,
                   low_cpu_mem_usage: bool = False) -> PeftModel:
    """Wrap `model` with the adapter `peft_config` describes, in the task class its task_type names."""
    if revision is not None:
        peft_config = peft_config.copy()
        peft_config.revision = revision
    return class_for_task(peft_config.task_type)(model, peft_config, adapter_name,
                                                 autocast_adapter_dtype=autocast_adapter_dtype)
