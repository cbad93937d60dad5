"""Training helpers on PeftModel: activation (gradient) checkpointing and the input-embeddings require-grad fix.

With activation checkpointing, a checkpointed block whose inputs do not require grad is replayed without
building a graph (the reentrant variant) and its adapters get no gradient: the base model's embeddings are
frozen, so their output does not require grad. The fix PEFT applies, and surgery too, is a forward hook that
marks the embeddings' output as requiring grad. It is installed when checkpointing is enabled through the
PeftModel, and when the base model already had checkpointing on as it was wrapped (as PEFT does).
"""
from __future__ import annotations

from typing import Optional

from ..graph.walk import iter_modules
from ..quantized import ready_for_training


def _outputs_require_grad(module, inputs, output):
    output.requires_grad_(True)


def _checkpointing_flag_set(model) -> bool:
    """transformers' `is_activation_checkpointing` (any module with a true `gradient_checkpointing`), reading
    the flag from each module's own dict: the property's hasattr() on ~1,000 modules costs ~1.5 ms."""
    for _, module in iter_modules(model):   # adapter layers' internals never carry the flag
        flag = module.__dict__.get("gradient_checkpointing")
        if flag is None:
            flag = getattr(type(module), "gradient_checkpointing", False)
        if flag:
            return True
    return False


_QUANTIZED_FLAGS = ("is_loaded_in_8bit", "is_loaded_in_4bit", "is_quantized")


def mark_input_grads(model) -> None:
    """The require-grad fix on `model`'s input embeddings (idempotent)."""
    if getattr(model, "_require_grads_hooks", None):
        return
    if hasattr(model, "enable_input_require_grads") and hasattr(model, "get_input_embeddings"):
        model.enable_input_require_grads()  # transformers: every input embedding of the model
        return
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        model._require_grads_hooks = [embeddings.register_forward_hook(_outputs_require_grad)]


class TrainingMixin:
    def train(self, mode: bool = True):
        """nn.Module.train; entering training mode also puts every quantized base weight back in the layout
        its library trains through (bitsandbytes' 4-bit CPU inference repacking has no backward)."""
        super().train(mode)
        if mode:
            for module in self.modules():
                ready_for_training(module)
        return self

    def prepare_model_for_gradient_checkpointing(self, model) -> None:
        """PEFT's: unless `model` is quantized (prepare_model_for_kbit_training handles those), make its input
        embeddings' output require grad, so checkpointed blocks reach the adapters."""
        if not any(getattr(model, flag, False) for flag in _QUANTIZED_FLAGS):
            mark_input_grads(model)

    def _prepare_for_gradient_checkpointing(self, model) -> None:
        """As PEFT at wrap time: a model with checkpointing already on (or one that cannot tell) gets the fix."""
        if any(getattr(model, flag, False) for flag in _QUANTIZED_FLAGS):
            return
        if hasattr(type(model), "is_activation_checkpointing"):   # transformers >= 5
            on = _checkpointing_flag_set(model)
        else:                                                      # older transformers, or not transformers
            on = getattr(model, "is_gradient_checkpointing", True)
        if on:
            self.enable_input_require_grads()

    def enable_input_require_grads(self) -> None:
        """Make the input embeddings' output require grad, so checkpointed blocks reach the adapters (idempotent)."""
        mark_input_grads(self.get_base_model())

    def disable_input_require_grads(self) -> None:
        base = self.get_base_model()
        for handle in getattr(base, "_require_grads_hooks", None) or []:
            handle.remove()
        if hasattr(base, "_require_grads_hooks"):
            base._require_grads_hooks = []

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: Optional[dict] = None,
                                        **kwargs) -> None:
        """Checkpoint the base model's layers (transformers' API; kwargs such as every_n_layers pass through)."""
        base = self.get_base_model()
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                                                 **kwargs)
        else:  # transformers < 5: the older name
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=activation_checkpointing_kwargs,
                                               **kwargs)
        self.enable_input_require_grads()

    def activation_checkpointing_disable(self) -> None:
        base = self.get_base_model()
        if hasattr(base, "activation_checkpointing_disable"):
            base.activation_checkpointing_disable()
        else:
            base.gradient_checkpointing_disable()
        self.disable_input_require_grads()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None, **kwargs) -> None:
        """PEFT users' name for activation_checkpointing_enable (same behaviour, no deprecation warning)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()
