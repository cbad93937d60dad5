"""BOFT: orthogonal fine-tuning with butterfly factorisation (Liu et al. 2024), for nn.Linear and nn.Conv2d.

    W' = s ⊙ (W M^T)              W: (out, F) (a Conv2d's weight flattened to (out, in*k*k)); s: (out,)
    M  = M_N-1 ⋯ M_0,  M_i = P_i blockdiag(Q_i,1 .. Q_i,D) P_i^T     butterfly factors of D blocks (b x b)
    Q  = (I - S)(I + S)^-1,  S = (R - R^T) / 2                     Cayley: orthogonal for any R
    Linear:  y = s ⊙ (W (x M)) + b          Conv2d: y = conv2d(x, W') + b
    dropout: while training, int(p * D) random blocks of one random factor become the identity

R: boft_R (N, D, b, b), zero at init (M = I); s: boft_s, one at init ((out, 1) for Linear, (1, out) for Conv2d).
PEFT without its CUDA extension runs N = 1 whatever boft_n_butterfly_factor says; so does surgery (spec.py).

    config.py   BOFTConfig                 butterfly.py  Cayley, butterfly shuffles, block products
    spec.py     the registry entry         blocks.py     block layout rules per layer
    layer.py    BOFTLayer (merge, scale)   linear.py / conv.py   the layer types
    model.py    BOFTModel                  dropout.py    multiplicative dropout
"""
from .config import BOFTConfig
from .model import BOFTModel
from .spec import SPEC

__all__ = ["BOFTConfig", "BOFTModel"]
