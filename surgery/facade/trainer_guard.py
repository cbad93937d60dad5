"""Why a plain transformers.Trainer refuses a surgery PeftModel, and how surgery's trainers are let through.

transformers' Trainer recognises adapter models with `isinstance(model, peft.PeftModel)`. A surgery model is not
one, so the Trainer would save every checkpoint as the full model (model.safetensors, GBs for a 7B base) and
could not resume from it, silently. There is no hook in the Trainer's save path to redirect, so the guard sits at
the one attribute only the Trainer's constructor reads of a model: `accepts_loss_kwargs` (transformers >= 4.46
reads it with hasattr() on the unwrapped model; TRL's trainers construct through it too). Reading it outside a
surgery trainer raises UnsupportedTrainerError naming SurgeryTrainer; inside one (`trainer_allowed()`, a context
variable, so nothing is stored on the model) it answers what the base model answers.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect

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
    """Inside: the model's `accepts_loss_kwargs` answers (a surgery trainer is being built)."""
    token = _ALLOWED.set(True)
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def accepts_loss_kwargs(model) -> bool:
    """The base model's answer (its attribute, else whether its forward takes **kwargs) inside trainer_allowed()."""
    if not _ALLOWED.get():
        raise UnsupportedTrainerError(REFUSAL.format(trainer="transformers' Trainer (or a subclass)"))
    base = model.get_base_model()
    if hasattr(base, "accepts_loss_kwargs"):
        return base.accepts_loss_kwargs
    params = inspect.signature(base.forward).parameters.values()
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)
