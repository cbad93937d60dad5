"""prepare_model_for_kbit_training: PEFT's set-up of a quantized (QLoRA) base before training.

Its effects, exactly as PEFT 0.21.2's:
  1. every parameter is frozen;
  2. unless the model is GPTQ / AQLM / EETQ / HQQ / torchao quantized, every fp16 / bf16 parameter that is not a
     packed 4-bit weight is cast to float32 (norms, embeddings, the head: training them stays stable);
  3. for a k-bit (or one of those) model with use_gradient_checkpointing: the input embeddings' output requires
     grad (unless use_reentrant=False is asked for, which does not need it) and gradient checkpointing is
     switched on with gradient_checkpointing_kwargs.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Optional

import torch

from ..facade.training import mark_input_grads

_KEEPS_DTYPES = ("gptq", "aqlm", "eetq", "hqq", "torchao")   # quantizers whose float parameters stay as loaded


def _quantization_method(model) -> Optional[str]:
    method = getattr(model, "quantization_method", None)
    method = getattr(method, "value", method)
    if getattr(model, "hqq_quantized", False):
        return "hqq"
    return str(method).lower() if method is not None else None


def prepare_model_for_kbit_training(model, use_gradient_checkpointing: bool = True,
                                    gradient_checkpointing_kwargs: Optional[dict] = None,
                                    auto_clear_cache: bool = True):
    """Freeze the base, upcast its half-precision non-quantized parameters to float32 and turn on gradient
    checkpointing for a k-bit model (see the module doc). Returns the model (changed in place)."""
    loaded_in_kbit = getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False)
    method = _quantization_method(model)
    keeps_dtypes = method in _KEEPS_DTYPES
    kwargs = dict(gradient_checkpointing_kwargs or {})
    for param in model.parameters():
        param.requires_grad = False
    if not keeps_dtypes:
        for param in model.parameters():
            if param.dtype in (torch.float16, torch.bfloat16) and type(param).__name__ != "Params4bit":
                param.data = param.data.to(torch.float32)
        if auto_clear_cache and torch.cuda.is_available():
            torch.cuda.empty_cache()   # the casts leave reserved-but-unused blocks behind
    if (loaded_in_kbit or keeps_dtypes) and use_gradient_checkpointing:
        if kwargs.get("use_reentrant", True):   # the reentrant variant needs inputs that require grad
            mark_input_grads(model)
        takes_kwargs = "gradient_checkpointing_kwargs" in inspect.signature(model.gradient_checkpointing_enable).parameters
        if kwargs and not takes_kwargs:
            warnings.warn("gradient_checkpointing_kwargs is not supported in this version of transformers. The passed "
                          "kwargs will be ignored. if you want to use that feature, please upgrade to the latest "
                          "version of transformers.", FutureWarning)
        model.gradient_checkpointing_enable(**({"gradient_checkpointing_kwargs": kwargs} if takes_kwargs else {}))
    return model
