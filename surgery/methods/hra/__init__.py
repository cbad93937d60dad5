"""HRA (Yuan et al. 2024): the base weight times a chain of r trainable Householder reflections, for Linear and
Conv2d.

    y = (W H) x + b,   H = R_1 R_2 ... R_r,   R_i = I - 2 u_i u_i^T / ||u_i||^2      hra_u = [u_1 .. u_r]: (n, r)
    apply_GS:          H = I - 2 Q Q^T,       Q = Gram-Schmidt(hra_u)                 (n = in, or in*k*k for Conv2d)

H is orthogonal, so W H keeps W's singular values. Linear layers apply H to the input, x H^T = x - ((x V) T^T) V^T
(compact WY form, reflections.py), never forming the n x n H; Conv2d layers fold it into the flattened weight the
same way, W H = W - ((W V) T) V^T. Several active adapters: W H_1 H_2 ... Merged: W' = W H; unmerged: W' H^T.
The default init repeats each of r/2 kaiming columns twice, so the reflections cancel in pairs (H = I, r even).

    config.py   HRAConfig              reflections.py   H = I - V T V^T and its products
    layer.py    HRALayer (init, merge) linear.py / conv.py   the layer types
    spec.py     the registry entry     model.py         HRAModel
"""
from .config import HRAConfig
from .model import HRAModel
from .spec import SPEC

__all__ = ["HRAConfig", "HRAModel"]
