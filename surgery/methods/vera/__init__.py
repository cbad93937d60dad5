"""VeRA (Kopiczko et al. 2023): one pair of frozen random projections per adapter, shared by every layer, and two
trainable scaling vectors per layer. For Linear and transformers' Conv1D.

    y = W x + b  +  Λ_b B Λ_d A dropout(x)          Λ_b = diag(vera_lambda_b)  (out,)  starts at 0
                                                   Λ_d = diag(vera_lambda_d)  (r,)    starts at d_initial
    A = vera_A[:, :in]   (r, in)    B = vera_B[:out, :]   (out, r)

vera_A (r, max_in) and vera_B (max_out, r) are drawn once per model from `projection_prng_key` (kaiming-uniform,
bound sqrt(6 / fan_in), PEFT's generator calls: A first, then B) and sliced by each layer to its shape; a later
adapter shares the first one's projections, as PEFT. Merged: W' = W + (Λ_b B)(Λ_d A) (transposed for Conv1D).

    config.py       VeraConfig                  projections.py   the shared projections (SPEC.shared_state)
    layer.py        Linear (and Conv1D)         spec.py          the registry entry
    model.py        VeraModel
"""
from .config import VeraConfig
from .model import VeraModel
from .spec import SPEC

__all__ = ["VeraConfig", "VeraModel"]
