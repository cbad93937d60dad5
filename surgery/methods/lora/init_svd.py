"""PiSSA and OLoRA: LoRA factors taken from the base weight itself, which keeps the rest (PEFT's pissa_init /
olora_init). W is the (out, in) weight in float32 (transposed back for fan_in_fan_out), s the scaling.

PiSSA (Meng et al. 2024), the principal singular triplets of W:
    W = U S V^T,   A = sqrt(S_r / s) V_r^T,   B = U_r sqrt(S_r / s),   W <- W - s B A
  so s B A = U_r S_r V_r^T and the adapted layer starts exactly as the original. "pissa_niter_N" takes U_r, S_r,
  V_r from torch.svd_lowrank(W, r, niter=N) (randomised: equal to PEFT's for the same torch seed).
OLoRA (Büyükakyüz 2024), the QR factors of W:
    W = Q R,   A = R[:r],   B = Q[:, :r],   W <- W - s B A
  on a bitsandbytes base W is dequantized, and the residual requantized with the weight's own settings.

Both compute in float32 and store the residual in the weight's own dtype; the factors go into the adapter's
dtype. Either init rewrites the base weight: disabling the adapter no longer gives the original model; the
save-time conversion (weight_conversion.py) turns a trained adapter into a plain LoRA for the original base.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...graph.kinds import in_out_features, is_conv1d
from ...quantized import backend_of
from ...quantized.bnb import BNB_4BIT, BNB_8BIT
from .init_options import pissa_niter

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def rank_refusal(base: nn.Module, r: int, what: str) -> Optional[str]:
    """r larger than W has singular values (or QR columns): PEFT's factors would silently be smaller than r."""
    in_f, out_f = in_out_features(base)
    if r > min(in_f, out_f):
        return (f"init_lora_weights={what!r} takes the top r components of the ({out_f}, {in_f}) weight, so r={r} "
                f"must be <= {min(in_f, out_f)}; lower r (rank_pattern for this module) or exclude it")
    return None


def non_finite_refusal(base: nn.Module, what: str) -> Optional[str]:
    """A decomposition of a weight holding NaN/inf fails (or spreads them into every factor): said up front."""
    weight = base.weight
    if backend_of(base) is None and weight.device.type != "meta" and not torch.isfinite(weight).all():
        return f"its weight holds NaN or inf values, which init_lora_weights={what!r} cannot decompose"
    return None


def pissa_refusal(base: nn.Module, config, r: int) -> Optional[str]:
    what = config.init_lora_weights
    if backend_of(base) is not None or base.weight.dtype not in FLOAT_DTYPES:   # PEFT's TypeError, with its advice
        return (f"init_lora_weights={what!r} needs a float32, float16 or bfloat16 base weight, this one is "
                f"{_storage(base)}: Please initialize PiSSA under float32, float16, or bfloat16. Subsequently, "
                f"re-quantize the residual model to help minimize quantization errors.")
    return rank_refusal(base, r, what)


def olora_refusal(base: nn.Module, config, r: int) -> Optional[str]:
    what = config.init_lora_weights
    backend = backend_of(base)
    if backend is not None and backend not in (BNB_4BIT, BNB_8BIT):
        return (f"init_lora_weights={what!r} on a {backend.label} base is not supported (OLoRA dequantizes and "
                f"requantizes bitsandbytes bases only); load the base in float or bitsandbytes")
    if backend is None and base.weight.dtype not in FLOAT_DTYPES:
        return f"Unsupported data type for the base layer. Got {base.weight.dtype}. (init_lora_weights={what!r})"
    if is_conv1d(base):
        # transformers' Conv1D stores (in, out): PEFT's OLoRA factors it untransposed, giving wrong shapes
        return (f"init_lora_weights={what!r} does not support fan_in_fan_out layers (a transformers Conv1D, "
                f"weight stored (in, out)), as PEFT's OLoRA; use 'pissa' or exclude the module")
    return rank_refusal(base, r, what)


def _storage(base: nn.Module) -> str:
    backend = backend_of(base)
    return f"a quantized {backend.label}" if backend is not None else str(base.weight.dtype).removeprefix("torch.")


def _dense_float32(layer) -> torch.Tensor:
    """The base weight as a float32 (out, in) matrix (dequantized for a quantized base)."""
    weight = layer.dense_base_weight().to(torch.float32)
    return weight.T if layer.fan_in_fan_out else weight


def set_factors(layer, name: str, lora_A: torch.Tensor, lora_B: torch.Tensor) -> None:
    """Write A and B into the adapter's parameters (their own dtype and device)."""
    layer.lora_A[name].weight.data.copy_(lora_A)
    layer.lora_B[name].weight.data.copy_(lora_B)


def store_residual(layer, residual: torch.Tensor) -> None:
    """Make the float32 (out, in) `residual` the base weight: in place in the weight's dtype and layout, or
    requantized with its own settings for a quantized base."""
    base = layer.get_base_layer()
    backend = backend_of(base)
    if backend is not None:
        backend.requantize(base, residual)
        return
    base.weight.data.copy_(residual.T if layer.fan_in_fan_out else residual)


@torch.no_grad()
def pissa_init(layer, name: str, config) -> None:
    W = _dense_float32(layer)
    r, s = layer.r[name], layer.scaling[name]
    niter = pissa_niter(config.init_lora_weights)
    if niter is None:
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        U_r, S_r, Vh_r = U[:, :r], S[:r] / s, Vh[:r]
    else:
        U_r, S_r, V_r = torch.svd_lowrank(W, r, niter=niter)
        S_r, Vh_r = S_r / s, V_r.t()
    root = torch.sqrt(S_r)
    lora_A = root[:, None] * Vh_r     # diag(sqrt(S_r / s)) @ V_r^T
    lora_B = U_r * root[None, :]      # U_r @ diag(sqrt(S_r / s))
    residual = W - (s * lora_B) @ lora_A
    set_factors(layer, name, lora_A, lora_B)
    store_residual(layer, residual)


@torch.no_grad()
def olora_init(layer, name: str, config) -> None:
    W = _dense_float32(layer)
    r, s = layer.r[name], layer.scaling[name]
    Q, R = torch.linalg.qr(W)
    lora_A, lora_B = R[:r].contiguous(), Q[:, :r].contiguous()
    residual = W - (s * lora_B) @ lora_A
    set_factors(layer, name, lora_A, lora_B)
    store_residual(layer, residual)
