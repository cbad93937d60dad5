"""Why a plain transformers.Trainer refuses a surgery PeftModel, and how surgery's trainers are let through.

transformers' Trainer recognises adapter models with `isinstance(model, peft.PeftModel)`. A surgery model is not
one, so the Trainer would save every checkpoint as the full model (model.safetensors, GBs for a 7B base) and
could not resume from it, silently. There is no hook in the Trainer's save path to redirect, so the guard sits at
an attribute the Trainer's constructor reads of the model: `accepts_loss_kwargs` (transformers >= 4.46 reads it
with hasattr() on the unwrapped model; TRL's trainers construct through it too). When a Trainer (the reading
frame's `self`, within a few frames) reads it outside a surgery trainer, it raises UnsupportedTrainerError
naming SurgeryTrainer; any other reader (dir()/getattr() introspection, ...) and surgery's trainers
(`trainer_allowed()`, a context variable: nothing is stored on the model) get what the base model answers.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import sys
from types import FrameType
from typing import Optional

from ..errors import UnsupportedTrainerError

_ALLOWED = contextvars.ContextVar("surgery_trainer_allowed", default=False)

REFUSAL = (
    "{trainer} got a surgery PeftModel, but it only knows peft's classes: it would save every checkpoint as the "
    "full model (model.safetensors) instead of the adapter, and could not resume from it. Use "
    "surgery.integrations.trainer.SurgeryTrainer (same arguments; adapter-only checkpoints in PEFT's format), "
    "TRL's trainers from surgery.integrations.trl (SFTTrainer, DPOTrainer, GRPOTrainer, RewardTrainer), or for a "
    "Trainer subclass of your own `class MyTrainer(SurgeryTrainerMixin, YourTrainer)`.")


@contextlib.contextmanager
def trainer_allowed():
    """Inside: the model's `accepts_loss_kwargs` answers a Trainer too (a surgery trainer is being built)."""
    token = _ALLOWED.set(True)
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def _read_by_a_trainer(frame: Optional[FrameType], depth: int = 4) -> bool:
    """Whether `frame` (the reader of the attribute) or one of its next callers is a transformers Trainer's."""
    trainer_module = sys.modules.get("transformers.trainer")   # not imported: no Trainer exists to ask
    if trainer_module is None:
        return False
    for _ in range(depth):
        if frame is None:
            return False
        if isinstance(frame.f_locals.get("self"), trainer_module.Trainer):
            return True
        frame = frame.f_back
    return False


def accepts_loss_kwargs(model, reader: Optional[FrameType] = None) -> bool:
    """The base model's answer (its attribute, else whether its forward takes **kwargs); refused to a Trainer
    that is not a surgery trainer (`reader`: the frame that read the attribute)."""
    if not _ALLOWED.get() and _read_by_a_trainer(reader):
        raise UnsupportedTrainerError(REFUSAL.format(trainer="transformers' Trainer (or a subclass)"))
    base = model.get_base_model()
    if hasattr(base, "accepts_loss_kwargs"):
        return base.accepts_loss_kwargs
    params = inspect.signature(base.forward).parameters.values()
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)
