"""FourierFT (Gao et al. 2024, "Parameter-Efficient Fine-Tuning with Discrete Fourier Transform") for nn.Linear
and transformers' Conv1D: each targeted weight W (out x in = M x N) learns n spectral coefficients c at fixed
random locations (k_j, l_j); the update is the real part of their inverse 2-D DFT.

    S[k_j, l_j] = c_j  (zero elsewhere)                   (k_j, l_j): PEFT's seeded draw, not saved
    ΔW = s · Re(ifft2(S)),  ΔW[m, i] = s/(MN) · Σ_j c_j cos(2π (k_j m / M + l_j i / N))
    y  = W x + b + ΔW x                                   s: config.scaling
    merged: W' = W + ΔW (transposed for Conv1D's (in, out) weight)

c (fourierft_spectrum) starts as N(0, 1) from the global RNG (PEFT's default init_weights=False) or at zero.

    config.py    FourierFTConfig      layer.py     FourierFTLinear (update, forward, merge)
    spec.py      the registry entry   spectrum.py  the seeded locations and two exact, cheap evaluations
    model.py     FourierFTModel
"""
from .config import FourierFTConfig
from .model import FourierFTModel
from .spec import SPEC

__all__ = ["FourierFTConfig", "FourierFTModel"]
