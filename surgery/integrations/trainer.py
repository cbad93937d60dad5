"""transformers' Trainer with surgery models: adapter-only checkpoints in PEFT's format, and resuming from them.

    from surgery.integrations.trainer import SurgeryTrainer       # instead of transformers.Trainer
    trainer = SurgeryTrainer(model=peft_model, args=TrainingArguments(...), train_dataset=...)
    trainer.train()                                  # checkpoint-N/ = adapter_config.json + adapter_model.safetensors
    trainer.train(resume_from_checkpoint=True)       # loads the adapter back into the same adapter slots

    class MyTrainer(SurgeryTrainerMixin, SomeTrainerSubclass): ...   # e.g. TRL's SFTTrainer

Why a subclass: transformers recognises adapter models with `isinstance(model, peft.PeftModel)`, and only when
`peft` is installed. A surgery PeftModel is neither, so a plain Trainer would write the *full* model as
model.safetensors in every checkpoint and fail to resume from it; a plain Trainer is therefore refused with a
message naming this class (surgery/facade/trainer_guard.py). The mixin replaces the Trainer's save, resume and
best-model loading with adapter-only ones and reads the label names from the task model underneath; the
columns to keep come from PeftModel.forward's signature, which is the base model's. Everything else, including
real `peft` models, is left to the Trainer. It behaves the same whether or not `peft` is installed.
"""
from __future__ import annotations

import inspect
import logging
import os
from typing import Optional

from transformers import Trainer
from transformers.utils import find_labels

from ..checkpoint.io import BIN_NAME, SAFETENSORS_NAME, adapter_dir, read_tensors
from ..checkpoint.state import set_peft_model_state_dict
from ..facade.peft_model import PeftModel
from ..facade.trainer_guard import trainer_allowed

logger = logging.getLogger(__name__)

TRAINING_ARGS_NAME = "training_args.bin"


def _has_adapter(directory: str) -> bool:
    return any(os.path.isfile(os.path.join(directory, n)) for n in (SAFETENSORS_NAME, BIN_NAME))


def load_adapters_from_checkpoint(model: PeftModel, checkpoint: str) -> list[str]:
    """Copy the adapters saved in a Trainer checkpoint into `model`'s adapters of the same names (in place:
    trainability and the optimizer's parameter references are kept). An adapter in the checkpoint that the
    model lacks is added with load_adapter. Returns the names loaded."""
    loaded = []
    for name in list(model.peft_config):
        directory = adapter_dir(checkpoint, name)
        if os.path.isdir(directory) and _has_adapter(str(directory)):
            set_peft_model_state_dict(model, read_tensors(directory), adapter_name=name)
            loaded.append(name)
    for entry in sorted(os.listdir(checkpoint)):
        path = os.path.join(checkpoint, entry)
        if entry not in model.peft_config and os.path.isdir(path) and _has_adapter(path) \
                and os.path.isfile(os.path.join(path, "adapter_config.json")):
            model.load_adapter(path, entry, is_trainable=False)
            loaded.append(entry)
    if not loaded:
        raise ValueError(f"no adapter of {list(model.peft_config)} found in checkpoint {checkpoint!r} "
                         f"(expected {SAFETENSORS_NAME} at its top level or in a subfolder per adapter)")
    logger.info("loaded adapter(s) %s from %s", loaded, checkpoint)
    return loaded


class SurgeryTrainerMixin:
    """Put before a Trainer class in the bases: `class T(SurgeryTrainerMixin, Trainer)`."""

    def __init__(self, *args, **kwargs):
        with trainer_allowed():   # the model's accepts_loss_kwargs answers instead of refusing the Trainer
            super().__init__(*args, **kwargs)
        base = self._surgery_base_model()
        if base is None:
            return
        # The Trainer reads labels from the class's forward; PEFT's task classes name them, PeftModel does not.
        if self.args.label_names is None:
            self.label_names = find_labels(type(base))
        self.can_return_loss = _can_return_loss(type(base))

    # -- which model -------------------------------------------------------------------------------------
    def _surgery_model(self, model=None) -> Optional[PeftModel]:
        model = self.model if model is None else model
        unwrapped = self.accelerator.unwrap_model(model, keep_torch_compile=False) \
            if getattr(self, "accelerator", None) is not None else model
        unwrapped = getattr(unwrapped, "_orig_mod", unwrapped)
        return unwrapped if isinstance(unwrapped, PeftModel) else None

    def _surgery_base_model(self):
        model = self._surgery_model()
        return model.get_base_model() if model is not None else None

    # -- the Trainer's hooks -----------------------------------------------------------------------------
    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        """Write the adapters (PEFT format) instead of the full model; the processing class and the training
        arguments as the Trainer does."""
        model = self._surgery_model()
        if model is None:
            return super()._save(output_dir, state_dict)
        import torch

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            logger.info("saving adapter checkpoint to %s", output_dir)
        # every rank calls save_pretrained: with sharded (FSDP2) parameters, gathering them is collective
        model.save_pretrained(output_dir, is_main_process=self.args.should_save)
        if not self.args.should_save:
            return
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        target = self._surgery_model(model if model is not None else self.model)
        if target is None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_adapters_from_checkpoint(target, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        target = self._surgery_model()
        if target is None:
            return super()._load_best_model()
        logger.info("loading the best adapter from %s (score: %s)", self.state.best_model_checkpoint,
                    self.state.best_metric)
        load_adapters_from_checkpoint(target, self.state.best_model_checkpoint)


def _can_return_loss(model_class) -> bool:
    params = inspect.signature(model_class.forward).parameters
    return "return_loss" in params and params["return_loss"].default is True


class SurgeryTrainer(SurgeryTrainerMixin, Trainer):
    """transformers.Trainer for surgery PeftModels: adapter-only checkpoints (PEFT format), resume, eval labels."""
