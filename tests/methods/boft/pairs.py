"""Surgery and peft BOFT models with the same non-identity adapter weights (peft is the test-only oracle)."""
from __future__ import annotations

import warnings

import torch

import surgery
from tests.support.helpers import MODELS


def perturb_boft(model, seed: int = 0, std: float = 0.1, adapter: str = "default") -> None:
    """Adapter `adapter`'s boft_R := N(0, std) (R = 0 is the identity), boft_s *= 1 + N(0, std) (s = 1 is)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            if f".boft_R.{adapter}" in name:
                p.copy_(noise)
            elif f".boft_s.{adapter}" in name:
                p.mul_(1 + noise)


def peft_boft(base, **kwargs):
    import peft

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # peft warns that its CUDA extension is missing
        return peft.get_peft_model(base, peft.BOFTConfig(**kwargs))


def pair(name: str, seed: int = 0, **kwargs):
    """(surgery model, peft model) on fresh MODELS[name] bases, both holding surgery's perturbed adapter."""
    import peft

    builder = MODELS[name][0]
    ours = surgery.get_peft_model(builder(), surgery.BOFTConfig(**kwargs))
    perturb_boft(ours, seed)
    theirs = peft_boft(builder(), **kwargs)
    peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours))
    return ours, theirs


def boft_layers(model) -> dict:
    """{path relative to the base model: layer} of every module holding boft_R (surgery's or peft's)."""
    prefix = "base_model.model."
    return {n[len(prefix):]: m for n, m in model.named_modules() if hasattr(m, "boft_R") and len(m.boft_R)}
