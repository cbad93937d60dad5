"""Initialisers for a new LoRA adapter, keyed by `init_lora_weights` (values: init_options.py).

    True          A ~ kaiming-uniform(a=sqrt(5)) (nn.Linear's default), B = 0   -> starts as the identity
    "gaussian"    A ~ N(0, 1/r), B = 0                                           -> starts as the identity
    False         both keep torch's default init (B != 0): a no-op init, for tests and debugging
    "orthogonal"  Q = QR(G), G ~ N(0, 1)^(r x r);  A = (G_A Q[0::2])^T / 10,  B = G_B^T Q[1::2] / 10
                  (G_A: in x r/2, G_B: r/2 x out Gaussian): rows of Q are orthonormal, so B A = 0 -> the identity
    "pissa", "pissa_niter_N", "olora"   init_svd.py: A, B from W's SVD / QR, W <- W - s B A -> the identity
    "loftq"       loftq.py: W <- its quantized values, A, B from the quantization error
    "corda"       corda.py: A, B from the SVD of W C (C: the inputs' covariance, preprocess_corda), W <- W - s B A
    "eva"         as True until initialize_lora_eva_weights sets A from the layer inputs' SVD (eva.py); not on convs
Embeddings swap the roles (A = 0, B ~ N(0, 1)), as in the LoRA paper's reference code; with the inits that
read W they keep that default, as in PEFT. The inits that read W apply to Linear / Conv1D layers (and for OLoRA
and "orthogonal" bitsandbytes ones); `plan_base_init` refuses the rest when the plan is made, before any weight
changes, and notes which inits rewrite the base weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ...errors import PlanError
from ...graph.kinds import is_conv, is_linear_like
from ...quantized import backend_of
from .corda import corda_init, corda_refusal
from .init_options import init_kind
from .init_svd import non_finite_refusal, olora_init, olora_refusal, pissa_init, pissa_refusal, set_factors
from .loftq import loftq_init, loftq_refusal


def _kaiming(weight, r):
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def _gaussian(weight, r):
    nn.init.normal_(weight, std=1 / r)


_A_INIT = {True: _kaiming, "gaussian": _gaussian, "eva": _kaiming}   # eva: PEFT keeps nn.Linear's init


@torch.no_grad()
def draw_torch_default_init(factors: tuple, keep: bool) -> None:
    """Each factor's nn.Linear / nn.Conv default init (kaiming-uniform weight, then a uniform bias), drawn as PEFT
    draws it: on the CPU in the default dtype, where PEFT builds the factors before moving them to the base's
    device. `keep`: copy it into the factor (the no-op init, False); else the draws only advance the generator,
    so that the next draw (A's init) is PEFT's and one seed gives both libraries the same adapter."""
    dtype = torch.get_default_dtype()
    for factor in factors:
        weight = torch.empty(factor.weight.shape, dtype=dtype)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        if keep:
            factor.weight.copy_(weight)
        if getattr(factor, "bias", None) is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            bias = torch.empty(factor.bias.shape, dtype=dtype).uniform_(-bound, bound)
            if keep:
                factor.bias.copy_(bias)


@torch.no_grad()
def init_linear_like(init, lora_A: nn.Module, lora_B: nn.Module, r: int, defaults_drawn: bool = False) -> None:
    """Initialise a Linear/Conv pair of LoRA factors in place (created uninitialised: torch.empty), drawing from
    torch's generator exactly as PEFT does. `defaults_drawn`: draw_torch_default_init already ran."""
    if lora_A.weight.device.type == "meta":
        return
    if init is not False and init not in _A_INIT:   # an init that reads W, on a layer type it does not support
        raise PlanError(f"init_lora_weights={init!r} is not supported for a {type(lora_A).__name__} adapter; "
                        f"it applies to Linear layers")
    if not defaults_drawn:
        draw_torch_default_init((lora_A, lora_B), keep=init is False)
    if init is False:
        return
    scratch = torch.empty(lora_A.weight.shape, dtype=torch.get_default_dtype())
    _A_INIT[init](scratch, r)
    lora_A.weight.copy_(scratch)
    nn.init.zeros_(lora_B.weight)
    if getattr(lora_B, "bias", None) is not None:
        nn.init.zeros_(lora_B.bias)


@torch.no_grad()
def init_embedding(init, weight_A: nn.Parameter, weight_B: nn.Parameter) -> None:
    """PEFT draws both factors with torch.randn (CPU, default dtype), then (unless False) A = 0 and B again."""
    if weight_B.device.type == "meta":
        return
    dtype = torch.get_default_dtype()
    drawn_A, drawn_B = torch.randn(weight_A.shape, dtype=dtype), torch.randn(weight_B.shape, dtype=dtype)
    if init is False:
        weight_A.copy_(drawn_A)
        weight_B.copy_(drawn_B)
        return
    nn.init.zeros_(weight_A)
    weight_B.copy_(nn.init.normal_(drawn_B))


# -- the inits that read the base weight ---------------------------------------------------------------------
def orthogonal_refusal(base: nn.Module, config, r: int) -> Optional[str]:
    if r % 2 != 0:   # PEFT's words (its tests match them)
        return f"Orthogonal initialization requires the LoRA rank to be even, got {r} instead."
    return None


@torch.no_grad()
def orthogonal_init(layer, name: str, config) -> None:
    r = layer.r[name]
    in_f, out_f = layer.in_out_features()
    Q, _ = torch.linalg.qr(torch.randn(r, r))   # drawn on the CPU, in this order: PEFT's random stream
    lora_A = torch.randn(in_f, r // 2).mm(Q[0::2, :]).T / 10.0
    lora_B = torch.randn(r // 2, out_f).T.mm(Q[1::2, :]) / 10.0
    set_factors(layer, name, lora_A, lora_B)


@dataclass(frozen=True)
class BaseInit:
    """An initialisation that reads the base weight: how it runs, when it cannot, and what the plan says."""

    run: Callable                                   # (layer, adapter_name, config) -> None, in place
    refusal: Callable                               # (base, config, r) -> why not (None: it can)
    rewrites_base: str = ""                         # the plan's note when it changes the base weights


_REWRITES = ("the base weights of the targeted layers: {what}. Disabling the adapter does not give the original "
             "model back, and the saved adapter needs this base. ")
_CONVERT = ("To share a plain LoRA adapter for the original base, save the adapter before training and pass that "
            "directory as path_initial_model_for_weight_conversion to save_pretrained.")
BASE_INITS = {
    "pissa": BaseInit(pissa_init, pissa_refusal, "PiSSA rewrites " + _REWRITES.format(
        what="W becomes the residual W - s B A of its top-r singular components") + _CONVERT),
    "olora": BaseInit(olora_init, olora_refusal, "OLoRA rewrites " + _REWRITES.format(
        what="W becomes the residual W - s B A of its first r QR components (requantized on a quantized base)")
        + _CONVERT),
    "orthogonal": BaseInit(orthogonal_init, orthogonal_refusal),
    "corda": BaseInit(corda_init, corda_refusal, "CorDA rewrites " + _REWRITES.format(
        what="W becomes the residual W - s B A of its CorDA components (preprocess_corda)") + _CONVERT),
    "loftq": BaseInit(loftq_init, loftq_refusal, "LoftQ rewrites " + _REWRITES.format(
        what="W becomes its quantized values (still stored in full precision; reload the saved base quantized for "
             "the memory savings)")),
}


def plan_base_init(site, r: int) -> None:
    """At plan time, for one target: refuse an init that reads W where it cannot run (PlanError naming the module
    and what would work), and note the inits that rewrite the base weights."""
    what = site.config.init_lora_weights
    if what == "eva" and is_conv(site.base):   # PEFT's convolutions fail on it ("Unknown initialization")
        raise PlanError(f"target module {site.fqn!r} is a {type(site.base).__name__}: init_lora_weights='eva' "
                        f"initialises Linear layers only (PEFT fails on convolutions too); exclude it or use "
                        f"init_lora_weights=True")
    kind = init_kind(what)
    if kind is None:
        return
    base, init = site.base, BASE_INITS[kind]
    if isinstance(base, nn.Embedding):
        if kind == "loftq":   # PEFT fails on embeddings; nothing in LoftQ is specific to them
            raise PlanError(f"target module {site.fqn!r} is an nn.Embedding: init_lora_weights='loftq' supports "
                            f"Linear layers only; exclude it or target Linear layers")
        site.note(f"init_lora_weights={what!r} applies to Linear layers: Embedding targets get LoRA's default "
                  f"embedding init (A = 0, B ~ N(0, 1)), as in PEFT")
        return
    if not is_linear_like(base) and backend_of(base) is None:   # convolutions, MultiheadAttention
        raise PlanError(f"target module {site.fqn!r} is a {type(base).__name__}: init_lora_weights={what!r} "
                        f"supports Linear layers only (PEFT fails on this layer type too); exclude it or use "
                        f"init_lora_weights=True")
    reason = init.refusal(base, site.config, r) or (non_finite_refusal(base, what) if init.rewrites_base else None)
    if reason:
        raise PlanError(f"target module {site.fqn!r}: {reason}")
    if init.rewrites_base:
        site.note(init.rewrites_base)


def init_from_base(layer, adapter_name: str, config) -> bool:
    """Run the init that reads the base weight, if `config` asks for one (True: done; False: not such an init)."""
    kind = init_kind(config.init_lora_weights)
    if kind is None:
        return False
    init = BASE_INITS[kind]
    reason = init.refusal(layer.get_base_layer(), config, layer.r[adapter_name])   # update_layer called directly
    if reason:
        raise PlanError(f"{layer._layer_name()}: {reason}")
    # the caller drew torch's default init first (draw_torch_default_init), as PEFT builds the factors: so
    # pissa_niter's and orthogonal's draws are PEFT's for the same seed
    init.run(layer, adapter_name, config)
    return True
