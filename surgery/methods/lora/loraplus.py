"""LoRA+ (Hayou et al. 2024): B learns faster than A.

    lr(A) = lr,   lr(B) = lr * loraplus_lr_ratio,   lr(LoRA embeddings) = loraplus_lr_embedding (1e-6)

With B = 0 at init, the update of B @ A is driven by B; a larger step for B (ratio ~ 2^4) speeds up and
improves feature learning at the same cost. Parameters go into PEFT's four groups, in its order: A (and
anything else trainable), embedding adapters, B and one-dimensional parameters (DoRA magnitudes, biases) with
weight decay `loraplus_weight_decay` (0), and those of them that take no decay (biases, LayerNorm weights).
"""
from __future__ import annotations

from typing import Type

from torch import nn
from torch.optim import Optimizer

from .embedding import Embedding

_EIGHT_BIT = ("Adam8bit", "AdamW8bit", "PagedAdam8bit", "PagedAdamW8bit")


def _decayed_names(model: nn.Module) -> set[str]:
    """Parameters outside LayerNorm modules and not biases: those that take weight decay (transformers' rule)."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            continue
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if "bias" not in full:
                names.add(full)
    return names


def create_loraplus_optimizer(model: nn.Module, optimizer_cls: Type[Optimizer], *, lr: float,
                              loraplus_lr_ratio: float, **kwargs) -> Optimizer:
    """An `optimizer_cls` over the model's trainable parameters in LoRA+'s learning-rate groups. kwargs go to
    the optimizer, except loraplus_weight_decay (0.0) and loraplus_lr_embedding (1e-6)."""
    if lr < 0 or loraplus_lr_ratio < 0:
        raise ValueError(f"create_loraplus_optimizer: lr = {lr!r} and loraplus_lr_ratio = {loraplus_lr_ratio!r} "
                         f"cannot be negative (the paper suggests a ratio >= 1, e.g. 16)")
    decayed = _decayed_names(model)
    modules = dict(model.named_modules())
    groups: dict[str, list] = {"A": [], "embedding": [], "B": [], "B_no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        holder = modules.get(".".join(name.split(".")[:-2]))   # the layer above the per-adapter dict
        if isinstance(holder, Embedding):
            groups["embedding"].append(param)
        elif "lora_B" in name or param.ndim == 1:
            groups["B" if name in decayed else "B_no_decay"].append(param)
        else:
            groups["A"].append(param)
    decay = kwargs.pop("loraplus_weight_decay", 0.0)
    lr_embedding = kwargs.pop("loraplus_lr_embedding", 1e-6)
    optimizer = optimizer_cls([
        {"params": groups["A"], "weight_decay": decay, "lr": lr},
        {"params": groups["embedding"], "weight_decay": decay, "lr": lr_embedding},
        {"params": groups["B"], "weight_decay": decay, "lr": lr * loraplus_lr_ratio},
        {"params": groups["B_no_decay"], "weight_decay": 0.0, "lr": lr * loraplus_lr_ratio},
    ], lr=lr, **kwargs)
    if optimizer_cls.__name__ in _EIGHT_BIT:   # bitsandbytes' 8-bit optimizers: embeddings keep 32-bit state
        import bitsandbytes

        manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                manager.register_module_override(module, "weight", {"optim_bits": 32})
    return optimizer
