"""LoftQ (Li et al. 2023): LoRA factors that absorb the quantization error of the base weight (PEFT's loftq_init,
init_lora_weights="loftq" with loftq_config = LoftQConfig(loftq_bits, loftq_iter)).

    R_0 = W
    for t = 1..T:   Q_t = dequant(quant(R_{t-1}))            (nf4 or int8: loftq_quant.py)
                    W - Q_t = U S V^T
                    B_t = U_r sqrt(S_r),  A_t = sqrt(S_r) V_r^T
                    R_t = W - B_t A_t
    W <- Q_T (kept in W's dtype: full precision holding quantized values),  A = A_T,  B = B_T

B A is not divided by the scaling s (PEFT's arithmetic), so the layer starts at Q_T + s B_T A_T, which equals
W when s = 1. The base stays a float weight: saving it and reloading it quantized (bitsandbytes, same block
size and format) gives the memory savings. For a model loaded in 4-bit already, see loftq_replace.py.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...graph.kinds import is_conv1d
from ...quantized import backend_of
from .init_svd import rank_refusal, set_factors
from .loftq_quant import ROUND_TRIPS


def low_rank_factors(residual: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with L R the best rank-`rank` approximation of `residual`: L = U_r sqrt(S_r), R = sqrt(S_r) V_r^T."""
    U, S, Vh = torch.linalg.svd(residual, full_matrices=False)
    root = torch.sqrt(S[:rank])
    return U[:, :rank] * root[None, :], root[:, None] * Vh[:rank]


@torch.no_grad()
def loftq_decompose(weight: torch.Tensor, num_bits: int, reduced_rank: int, num_iter: int = 1):
    """(dequantized Q_T in weight's dtype, A, B) of LoftQ with `num_iter` alternations (float32 factors)."""
    dtype = weight.dtype
    W = weight.to(torch.float32)
    residual = W
    for step in range(num_iter):
        dequantized = ROUND_TRIPS[num_bits](residual)
        lora_B, lora_A = low_rank_factors(W - dequantized, reduced_rank)
        if step + 1 < num_iter:   # the last step's residual is never used
            residual = W - lora_B @ lora_A
    return dequantized.to(dtype), lora_A, lora_B


def loftq_refusal(base: nn.Module, config, r: int) -> Optional[str]:
    if backend_of(base) is not None:   # PEFT would decompose the packed bytes
        return ("init_lora_weights='loftq' quantizes a full-precision base itself; this base is quantized "
                "already: load it unquantized, or keep it quantized and call replace_lora_weights_loftq("
                "peft_model) after get_peft_model")
    if not base.weight.is_floating_point():
        return f"init_lora_weights='loftq' needs a floating-point base weight, this one is {base.weight.dtype}"
    if is_conv1d(base):   # PEFT's loftq_init factors the (in, out) weight untransposed: wrong shapes
        return ("init_lora_weights='loftq' does not support fan_in_fan_out layers (a transformers Conv1D, weight "
                "stored (in, out)), as PEFT's LoftQ; exclude the module")
    return rank_refusal(base, r, "loftq")


@torch.no_grad()
def loftq_init(layer, name: str, config) -> None:
    weight = layer.get_base_layer().weight
    settings = config.loftq_config
    quantized, lora_A, lora_B = loftq_decompose(weight, settings["loftq_bits"], layer.r[name],
                                                settings["loftq_iter"])
    set_factors(layer, name, lora_A, lora_B)
    weight.data.copy_(quantized)
