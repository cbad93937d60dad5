"""Shared helpers of the LoHa / LoKr tests: one adapted layer in surgery and in peft with the same weights.

`pair(...)` wraps a single base layer (attribute `layer` of a tiny holder module) with the same config in both
libraries and copies surgery's perturbed adapter into peft with the checkpoint functions.
"""
from __future__ import annotations

import copy
import warnings

import peft
import torch
from torch import nn

import surgery
from tests.support.helpers import max_diff  # noqa: F401  (one torch thread, see helpers.py)


class Holder(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


# base layer factories and their inputs: the base layer types PEFT's LoHa/LoKr wrap
LAYERS = {
    "linear": (lambda: nn.Linear(64, 48), (3, 5, 64)),
    "linear_bias_free": (lambda: nn.Linear(40, 24, bias=False), (4, 40)),
    "conv2d": (lambda: nn.Conv2d(4, 6, 3, padding=1), (2, 4, 7, 7)),
    "conv2d_1x1": (lambda: nn.Conv2d(6, 8, 1), (2, 6, 5, 5)),
    "conv2d_grouped_strided": (lambda: nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2), (2, 6, 9, 9)),
    "conv1d": (lambda: nn.Conv1d(6, 8, 3, padding=1, dilation=1), (2, 6, 11)),
}


def base_holder(kind: str, seed: int = 0) -> Holder:
    torch.manual_seed(seed)
    return Holder(LAYERS[kind][0]()).eval()


def inputs(kind: str, seed: int = 5) -> torch.Tensor:
    return torch.randn(LAYERS[kind][1], generator=torch.Generator().manual_seed(seed))


def perturb(model: nn.Module, adapter: str = "default", std: float = 0.3, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".{adapter}." in f".{name}.":
                p.copy_(torch.randn(p.shape, generator=g) * std)


def pair(kind: str, config_name: str, std: float = 0.3, **kwargs):
    """(surgery model, peft model, base holder) on the same base layer with the same perturbed adapter."""
    base = base_holder(kind)
    kwargs.setdefault("target_modules", ["layer"])
    ours = surgery.get_peft_model(copy.deepcopy(base), getattr(surgery, config_name)(**kwargs))
    perturb(ours, std=std)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), getattr(peft, config_name)(**kwargs))
        peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours))
    return ours.eval(), theirs.eval(), base


def adapter_grads(model: nn.Module, x: torch.Tensor, seed: int = 11) -> tuple[torch.Tensor, dict]:
    """Training-mode output and the adapter parameters' gradients of a fixed random projection of it
    (torch is seeded first: module/rank dropout draw the same numbers in both libraries)."""
    model.train()
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = model(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (out * weights).sum().backward()
    # None: the adapter sat out this forward (module dropout)
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    grads["input"] = x.grad.clone()
    model.eval()
    return out.detach(), grads


def base_weight(model: nn.Module) -> torch.Tensor:
    """The wrapped layer's base weight (surgery or peft model)."""
    return model.base_model.model.layer.get_base_layer().weight


def adapter_layer(model: nn.Module) -> nn.Module:
    return model.base_model.model.layer


def set_factor(model: nn.Module, value: float) -> None:
    """Put `value` into one adapter factor (a NaN/inf for the safe-merge tests)."""
    with torch.no_grad():
        name, p = next((n, p) for n, p in model.named_parameters() if ".default" in n)
        p.view(-1)[0] = value
