"""The six task classes: one shared implementation, each a row of the task table (surgery/tasks.py).

PEFT keeps a near-copy of forward/generate per task; here a class is a name, a docstring and the heads
that train in full (modules_to_save), e.g. the classifier for SEQ_CLS.
"""
from __future__ import annotations

import inspect
from typing import Optional

from ..config.base import PeftConfig
from ..config.enums import TaskType
from ..tasks import TASKS, task_for
from .peft_model import PeftModel


class _ClassifierMixin:
    @property
    def cls_layer_name(self) -> Optional[str]:
        model = self.get_base_model()
        return next((name for name in self.default_modules_to_save if hasattr(model, name)), None)


def _named_forward(names: tuple[str, ...]):
    """PeftModel.forward under PEFT's signature for a task (see Task.forward_args): positional arguments bind
    by these names, unset ones (None) are left to the model's defaults."""
    signature = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for n in names]
        + [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])

    def forward(self, *args, **kwargs):
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}.forward takes at most {len(names)} positional arguments "
                            f"({', '.join(names)}); got {len(args)}")
        named = dict(zip(names, args))
        clash = sorted(set(named) & set(kwargs))
        if clash:
            raise TypeError(f"{type(self).__name__}.forward got multiple values for {', '.join(clash)}")
        named.update(kwargs)
        return PeftModel.forward(self, **{k: v for k, v in named.items() if v is not None or k not in names})

    forward.__signature__ = signature
    forward.__doc__ = PeftModel.forward.__doc__
    return forward


def _task_class(task) -> type:
    bases = (_ClassifierMixin, PeftModel) if task.heads else (PeftModel,)
    attrs = {"__doc__": task.doc, "__module__": __name__, "default_modules_to_save": task.heads}
    if task.forward_args:
        attrs["forward"] = _named_forward(task.forward_args)
    return type(task.class_name, bases, attrs)


MODEL_TYPE_TO_PEFT_MODEL_MAPPING = {task_type: _task_class(task) for task_type, task in TASKS.items()}
PeftModel.task_classes = MODEL_TYPE_TO_PEFT_MODEL_MAPPING   # from_pretrained picks the class by task_type

PeftModelForSequenceClassification = MODEL_TYPE_TO_PEFT_MODEL_MAPPING[TaskType.SEQ_CLS]
PeftModelForSeq2SeqLM = MODEL_TYPE_TO_PEFT_MODEL_MAPPING[TaskType.SEQ_2_SEQ_LM]
PeftModelForCausalLM = MODEL_TYPE_TO_PEFT_MODEL_MAPPING[TaskType.CAUSAL_LM]
PeftModelForTokenClassification = MODEL_TYPE_TO_PEFT_MODEL_MAPPING[TaskType.TOKEN_CLS]
PeftModelForQuestionAnswering = MODEL_TYPE_TO_PEFT_MODEL_MAPPING[TaskType.QUESTION_ANS]
PeftModelForFeatureExtraction = MODEL_TYPE_TO_PEFT_MODEL_MAPPING[TaskType.FEATURE_EXTRACTION]


def class_for_task(task_type) -> type:
    task_for(task_type)   # a clear error for an invalid task type
    return PeftModel if task_type is None else PeftModel.task_classes[task_for(task_type).task_type]


def get_peft_model(model, peft_config: PeftConfig, adapter_name: str = "default", mixed: bool = False,
                   autocast_adapter_dtype: bool = True, revision: Optional[str] = None,
                   low_cpu_mem_usage: bool = False) -> PeftModel:
    """Wrap `model` with the adapter `peft_config` describes, in the task class its task_type names."""
    if revision is not None:
        peft_config = peft_config.copy()
        peft_config.revision = revision
    return class_for_task(peft_config.task_type)(model, peft_config, adapter_name,
                                                 autocast_adapter_dtype=autocast_adapter_dtype)
