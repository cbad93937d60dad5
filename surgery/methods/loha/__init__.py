"""LoHa (Low-Rank Hadamard Product, FedPara; Hyeon-Woo et al. 2021) for Linear, Conv1d and Conv2d, as PEFT's.

    y = W x + b  +  ΔW x,      ΔW = s (W1a W1b) ⊙ (W2a W2b),    s = alpha / r
    W1a, W2a: (out, r)   W1b, W2b: (r, in)       (conv: in = in_channels / groups * prod(kernel))
    effective conv2d (CP):  ΔW = s (T1 ×₁ W1a ×₂ W1b) ⊙ (T2 ×₁ W2a ×₂ W2b),  T: (r, r, kh, kw)
    training: module dropout skips the adapter; rank dropout keeps ΔW's rows with a mask m / mean(m)

    config.py  LoHaConfig         layer.py   LoHaLayer (factors, init, ΔW, merge)
    spec.py    the registry entry linear.py / conv.py   the layer types
    model.py   LoHaModel          hadamard.py  ΔW and its Khatri-Rao factored form (the training path)
"""
from .config import LoHaConfig
from .model import LoHaModel
from .spec import SPEC

__all__ = ["LoHaConfig", "LoHaModel"]
