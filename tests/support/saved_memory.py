"""Bytes autograd keeps for backward after one training forward (saved-activation memory tests)."""
from __future__ import annotations

import torch

from surgery.profiling import saved_activation_bytes


def saved_bytes(model, inputs) -> int:
    """surgery.profiling.saved_activation_bytes for a causal LM's forward on `inputs` (seed 0: the same dropout
    masks in every model), loss = mean of the squared logits."""
    def step():
        torch.manual_seed(0)
        return model(input_ids=inputs).logits.float().square().mean()
    return saved_activation_bytes(model, step)
