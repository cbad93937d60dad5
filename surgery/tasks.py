"""The one task table: everything surgery knows per PEFT task type, as data.

Each row says which PeftModel class PEFT users get for the task, which heads train in full and are saved
with the adapter (modules_to_save), which transformers Auto class builds such a model, and how the inputs
move when a method prepends virtual tokens. The façade, the planner, the CLI, the bundled
architectures and the virtual-token forward all read this table; none keeps its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .config.enums import TaskType
from .errors import ConfigError


@dataclass(frozen=True)
class Task:
    task_type: Optional[TaskType]
    class_name: str                        # the PeftModel class PEFT users get
    doc: str
    heads: tuple[str, ...] = ()            # trained in full and saved with the adapter (modules_to_save)
    output_heads: tuple[str, ...] = ()     # what all-linear skips when the model has no output embeddings
    auto_class: str = "AutoModel"          # the transformers class that builds a model for the task
    # virtual-token methods: how the inputs move when P virtual tokens are prepended
    pad_labels: bool = False               # token-level labels get -100 for the virtual tokens
    token_type_ids: str = "drop"           # "pad" with zeros for the virtual tokens, or "drop" (PEFT's choice)
    shift: tuple[str, ...] = ()            # token indexes that move right by P
    # PEFT's forward parameters for the task, in order: transformers' Trainer keeps the dataset columns the
    # forward signature names (remove_unused_columns), and positional calls bind by these names
    forward_args: tuple[str, ...] = ()


_CLASSIFIER = ("classifier", "score")
_OUTPUTS = ("output_attentions", "output_hidden_states", "return_dict", "task_ids")
_ARGS = ("input_ids", "attention_mask", "inputs_embeds")

TASKS: dict[TaskType, Task] = {t.task_type: t for t in (
    Task(TaskType.SEQ_CLS, "PeftModelForSequenceClassification", "Peft model for sequence classification tasks.",
         heads=_CLASSIFIER, output_heads=("score", "classifier"), auto_class="AutoModelForSequenceClassification",
         token_type_ids="pad", forward_args=(*_ARGS, "labels", *_OUTPUTS)),
    Task(TaskType.SEQ_2_SEQ_LM, "PeftModelForSeq2SeqLM", "Peft model for sequence-to-sequence language modeling.",
         auto_class="AutoModelForSeq2SeqLM",
         forward_args=(*_ARGS, "decoder_input_ids", "decoder_attention_mask", "decoder_inputs_embeds", "labels",
                       *_OUTPUTS)),
    Task(TaskType.CAUSAL_LM, "PeftModelForCausalLM", "Peft model for causal language modeling.",
         auto_class="AutoModelForCausalLM", pad_labels=True, forward_args=(*_ARGS, "labels", *_OUTPUTS)),
    Task(TaskType.TOKEN_CLS, "PeftModelForTokenClassification", "Peft model for token classification tasks.",
         heads=_CLASSIFIER, auto_class="AutoModelForTokenClassification", pad_labels=True, token_type_ids="pad",
         forward_args=(*_ARGS, "labels", *_OUTPUTS)),
    Task(TaskType.QUESTION_ANS, "PeftModelForQuestionAnswering", "Peft model for extractive question answering.",
         heads=("qa_outputs",), auto_class="AutoModelForQuestionAnswering", token_type_ids="pad",
         shift=("start_positions", "end_positions"),
         forward_args=("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds",
                       "start_positions", "end_positions", *_OUTPUTS)),
    Task(TaskType.FEATURE_EXTRACTION, "PeftModelForFeatureExtraction",
         "Peft model for extracting features/embeddings from transformer models.", auto_class="AutoModel",
         forward_args=(*_ARGS, *_OUTPUTS)),
)}

NO_TASK = Task(None, "PeftModel", "Base model encompassing various PEFT methods.")


def task_for(task_type) -> Task:
    """The row for `task_type` (a TaskType, its string value, or None for no task)."""
    if task_type is None:
        return NO_TASK
    try:
        return TASKS[TaskType(task_type)]
    except ValueError:
        raise ConfigError(f"task_type = {task_type!r} is not valid; valid: "
                          f"{', '.join(t.value for t in TaskType)}") from None


def shift_tokens_right(input_ids: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Seq2seq decoder inputs from labels (PEFT's helper): one step right, the start token first, label
    padding (-100) replaced by the pad token."""
    if pad_token_id is None:
        raise ValueError("self.model.config.pad_token_id has to be defined. (shift_tokens_right needs the pad "
                         "token id to replace the -100 label padding)")
    shifted = input_ids.new_zeros(input_ids.shape)
    shifted[:, 1:] = input_ids[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill_(shifted == -100, pad_token_id)
