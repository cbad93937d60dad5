"""Tiny one-layer models and surgery/peft OFT pairs on the same weights, for the OFT layer tests."""
from __future__ import annotations

import warnings

import torch
from torch import nn

import surgery


class OneLayer(nn.Module):
    """One base layer under the name `layer` (so target_modules=["layer"] picks it)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


# name: (builder of the base layer, input builder); every base is seeded
LAYERS = {
    "linear": (lambda: nn.Linear(16, 12), lambda g: torch.randn(3, 5, 16, generator=g)),
    "linear_bias_free": (lambda: nn.Linear(24, 8, bias=False), lambda g: torch.randn(7, 24, generator=g)),
    "conv1x1": (lambda: nn.Conv2d(8, 6, 1), lambda g: torch.randn(2, 8, 5, 4, generator=g)),
    "conv3x3": (lambda: nn.Conv2d(2, 5, 3, padding=1, stride=2), lambda g: torch.randn(2, 2, 7, 6, generator=g)),
    "embedding": (lambda: nn.Embedding(20, 12, padding_idx=0), lambda g: torch.randint(0, 20, (3, 6), generator=g)),
}


def base_model(kind: str, seed: int = 0) -> OneLayer:
    torch.manual_seed(seed)
    return OneLayer(LAYERS[kind][0]()).eval()


def inputs(kind: str, seed: int = 5) -> torch.Tensor:
    return LAYERS[kind][1](torch.Generator().manual_seed(seed))


def perturb(model: nn.Module, seed: int = 3, std: float = 0.1) -> None:
    """Non-identity OFT parameters (every adapter), seeded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "oft_" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std)


def pair(kind: str, dtype=torch.float32, **config):
    """(surgery model, peft model) on equal base weights with equal, perturbed adapter 'default'."""
    import peft

    config.setdefault("target_modules", ["layer"])
    ours = surgery.get_peft_model(base_model(kind).to(dtype), surgery.OFTConfig(**config))
    perturb(ours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(base_model(kind).to(dtype), peft.OFTConfig(**config))
        peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours))
    return ours, theirs


def adapter_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """{key without the adapter segment and wrapper prefix: grad} of every OFT parameter."""
    return {name.replace("base_model.model.", ""): p.grad.clone()
            for name, p in model.named_parameters() if "oft_" in name and p.grad is not None}
