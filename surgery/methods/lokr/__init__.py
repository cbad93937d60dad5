"""LoKr (Low-Rank Kronecker Product, LyCORIS; Yeh et al. 2023) for Linear, Conv1d and Conv2d, as PEFT's.

    y = W x + b  +  ΔW x,      ΔW = s (W1 ⊗ W2),    s = alpha / r
    out = a b, in = c d (PEFT's factorization: divisors near the square root, or decompose_factor)
    W1: (a, c), or A1 B1 of rank r (decompose_both and r < max(a, c) / 2)
    W2: (b, d[, kernel]), or A2 B2 of rank r (r < max(b, d) / 2), or a CP core (effective conv2d)
    ΔW x with x viewed as X: (tokens, c, d)  =  s W1 X W2ᵀ   (the training path: ΔW is never formed)
    training: module dropout skips the adapter; rank dropout masks ΔW's rows (/ mean with rank_dropout_scale)

    config.py  LoKrConfig         factorization.py  the split of out / in and which factors are low-rank
    spec.py    the registry entry layer.py   LoKrLayer (factors, init, ΔW, merge)
    model.py   LoKrModel          linear.py / conv.py  the layer types;  kron.py  the Kronecker products
"""
from .config import LoKrConfig
from .model import LoKrModel
from .spec import SPEC

__all__ = ["LoKrConfig", "LoKrModel"]
