"""Shared by the VeRA and HRA tests: a tiny two-layer model per base layer type, surgery/peft pairs carrying the
same non-identity adapter weights, and what the tests compare (gradients, base weights)."""
from __future__ import annotations

import copy
import warnings

import peft
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import surgery


class Stack(nn.Module):
    """pre -> a -> b: two adaptable layers of different shapes (VeRA slices its projections per layer), after a
    fixed one so that input gradients flow through the adapters."""

    def __init__(self, kind: str):
        super().__init__()
        if kind == "linear":
            self.pre, self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 10), nn.Linear(10, 4)
        elif kind == "conv1d":          # transformers' Conv1D(nf=out, nx=in): weight (in, out)
            self.pre, self.a, self.b = nn.Linear(6, 6), Conv1D(10, 6), Conv1D(4, 10)
            for layer in (self.a, self.b):
                nn.init.normal_(layer.bias, std=0.1)
        elif kind == "conv2d":
            self.pre = nn.Conv2d(3, 3, 1)
            self.a, self.b = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 4, 3, stride=2, padding=1)
        else:
            raise ValueError(kind)

    def forward(self, x):
        return self.b(torch.tanh(self.a(self.pre(x))))


def stack(kind: str, seed: int = 0) -> tuple[Stack, torch.Tensor]:
    torch.manual_seed(seed)
    model = Stack(kind).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2, 3, 8, 8, generator=g) if kind == "conv2d" else torch.randn(3, 5, 6, generator=g)
    return model, x


def perturb(model: nn.Module, seed: int = 0, std: float = 0.1) -> None:
    """Every trainable parameter (the adapter's, trained biases) := N(0, std), seeded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def pair(config: str, base: nn.Module, seed: int = 0, std: float = 0.1, **kwargs):
    """(surgery model, peft model) of `base` with config class `config`, same perturbed adapter 'default'."""
    ours = surgery.get_peft_model(copy.deepcopy(base), getattr(surgery, config)(**kwargs))
    perturb(ours, seed, std)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), getattr(peft, config)(**kwargs))
        peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours))
    return ours, theirs


def trainable_grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(output, {parameter name: gradient}) of a sum-of-squares loss, every trainable parameter and the input."""
    x = x.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out ** 2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    grads["<input>"] = x.grad
    return out.detach(), grads


def base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the adapted layers' base weights, by module path (the same keys in surgery and peft)."""
    root = model.get_base_model()
    return {n: m.get_base_layer().weight.detach().clone() for n, m in root.named_modules()
            if hasattr(m, "get_base_layer") and not isinstance(m, nn.ModuleDict) and hasattr(m, "merged_adapters")}


def set_active(model: nn.Module, names: list[str]) -> None:
    """Activate several adapters on every adapter layer (PEFT's layer-level set_adapter, in both libraries)."""
    for module in model.modules():
        if hasattr(module, "merged_adapters") and hasattr(module, "set_adapter"):
            module.set_adapter(names)
