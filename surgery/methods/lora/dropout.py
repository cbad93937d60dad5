"""LoRA dropout without keeping its activations: nn.Dropout's own mask, kept as bits or drawn again in backward.

nn.Dropout(p) in training is F.dropout(x, p), which aten computes as
    CPU    noise = bernoulli(1 - p) drawn into a tensor of x's shape, dtype and strides;  noise /= 1 - p
           x_d = x * noise                       autograd keeps noise (tokens x in), the next op keeps x_d
    CUDA   (x_d, mask) = native_dropout(x, p)    one fused kernel; autograd keeps the bool mask
both from the device's default generator. A training node makes that same draw itself (the generator advances
as under nn.Dropout, so the masks are PEFT's for a seed, step after step) and keeps x, which the adapter's A
needs anyway (shared by q/k/v and gate/up), plus one of:
    replay (CUDA)  the generator state just before the draw (16 bytes: philox seed and offset); backward puts
                   it back, draws again, and restores the state it found:
                   (x_d, mask) = native_dropout(x, p) on the same x,  dx = native_dropout_backward(g_d, mask, 1/(1-p))
    bits (CPU)     the mask, 1 bit per element (tokens x in / 8 bytes); backward rebuilds the noise:
                   noise = float(bits) / (1 - p),  x_d = x * noise,  dx = g_d * noise
Both are the ops F.dropout and its autograd run, so x_d and dx are bit-identical to nn.Dropout's. Why two:
the CPU draw is mt19937, one element at a time (4.9 ms for 512 x 1376, one thread: as long as a 512 x 1376 x
512 GEMM), so drawing again would cost that per layer and step, while packing and unpacking the bits take 0.1
and 0.4 ms; a CUDA draw is one cheap elementwise kernel, so there nothing is kept. REPLAY says which, per
device type; the CPU replay is kept and tested as the model of the CUDA one (no GPU was at hand to run that).

torch.utils.checkpoint (reentrant or not) restores the RNG state at the start of a segment before recomputing
it, so the recomputed forward makes the same draws as the first one. Other devices, a dropout that is not a
plain nn.Dropout, p = 1 and, on the generic path, autocast run the module as before.
"""
from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module_globals

REPLAY = {"cuda": True, "cpu": False}     # device type -> draw again in backward (True) or keep the bits (False)


class Drop(NamedTuple):
    """What a node keeps of one dropout draw besides its saved tensors: the probability and, for a replay, the
    generator state just before the draw (None: the mask is a saved bits tensor)."""
    p: float
    state: Optional[torch.Tensor]


def dropout_p(module: nn.Module, x: torch.Tensor) -> Optional[float]:
    """How a node runs the adapter dropout `module` on x now: 0.0 when it is the identity (nn.Identity, eval
    mode, or p = 0 as TRL's disable_dropout sets it: F.dropout then returns x and draws nothing), p when the
    node can make the draw and keep it (draw / replay), None when the module must run (its output kept).
    p and training are read here, at forward time, as nn.Dropout.forward reads them."""
    if isinstance(module, nn.Identity):
        return 0.0
    if type(module) is not nn.Dropout or module.inplace or module._forward_hooks or module._forward_pre_hooks:
        return None
    if "forward" in module.__dict__:
        return None
    p = float(module.p)
    if not module.training or p == 0.0:
        return 0.0
    if p >= 1.0 or x.device.type not in REPLAY or type(x) is not torch.Tensor:
        return None
    return p


def _get_state(device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return torch.get_rng_state()
    return torch.cuda.get_rng_state(device)


@contextlib.contextmanager
def _generator_at(device: torch.device, state: torch.Tensor):
    """Run the body with the device's default generator at `state`, then put back where it was."""
    if device.type == "cpu":
        now = torch.get_rng_state()
        torch.set_rng_state(state)
        try:
            yield
        finally:
            torch.set_rng_state(now)
    else:
        now = torch.cuda.get_rng_state(device)
        torch.cuda.set_rng_state(state, device)
        try:
            yield
        finally:
            torch.cuda.set_rng_state(now, device)


_MAGIC = 0x8040201008040201   # 8 bytes of 0/1 times this: the 8 bits gathered in the top byte


def _pack(mask: torch.Tensor) -> torch.Tensor:
    """bool mask -> uint8, 8 elements (x's logical order) a byte: one multiply per 8 (7x the speed of shifts)."""
    flat = mask.reshape(-1)
    if flat.numel() % 8:
        flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)])
    return ((flat.view(torch.uint8).view(torch.int64) * _MAGIC) >> 56).to(torch.uint8)


# which bit of a packed byte holds element i of its 8: found by packing each alone (so any byte order works)
_BIT_OF = [int(_pack(torch.arange(8) == i)[0]) for i in range(8)]
_TABLES: dict = {}


def _noise_table(p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(256, 8): row b = the noise of the 8 elements packed in byte b, made as F.dropout makes it: mask / (1 - p)."""
    key = (p, dtype, device)
    table = _TABLES.get(key)
    if table is None:
        bits = torch.arange(256).unsqueeze(1).bitwise_and(torch.tensor(_BIT_OF)).ne(0)
        table = _TABLES[key] = bits.to(dtype).div_(1 - p).to(device)
    return table


def draw(x: torch.Tensor, p: float) -> tuple[torch.Tensor, Drop, Optional[torch.Tensor]]:
    """x_d = F.dropout(x, p) exactly as nn.Dropout draws it (the generator advances the same); the Drop and the
    tensor to save (the bits, or None for a replay) that give it back in backward."""
    if REPLAY[x.device.type]:
        state = _get_state(x.device)
        return F.dropout(x, p, True), Drop(p, state), None
    noise = torch.empty_like(x).bernoulli_(1 - p)   # F.dropout's own draw (aten's _dropout_impl), op for op
    bits = _pack(noise.ne(0))
    return x * noise.div_(1 - p), Drop(p, None), bits


def replay(x: torch.Tensor, drop: Drop, bits: Optional[torch.Tensor]
           ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(x_d, back): the dropped input `draw` made from this same x, and the function carrying a gradient of x_d
    back to x (it may work in place on its argument). A replay leaves the generator where it found it."""
    if drop.state is None:     # F.dropout's noise, bit for bit: a lookup of the 8 values of each byte
        noise = F.embedding(bits.long(), _noise_table(drop.p, x.dtype, x.device)).view(-1)[:x.numel()].view(x.shape)
        return x * noise, lambda g: g.mul_(noise)
    if x.device.type == "cpu":
        with _generator_at(x.device, drop.state):
            noise = F.dropout(torch.ones_like(x), drop.p, True)
        return x * noise, lambda g: g.mul_(noise)
    with _generator_at(x.device, drop.state):
        x_d, mask = torch.native_dropout(x, drop.p, True)
    scale = 1.0 / (1.0 - drop.p)   # the double autograd's native_dropout formula passes
    return x_d, lambda g: torch.native_dropout_backward(g, mask, scale)


class _DroppedLinear(torch.autograd.Function):
    """h = dropout(x) A^T for the generic path (nn.Linear A without bias), keeping x and the mask's bits (or
    state), not dropout's noise and the dropped x:  dA = gh^T x_d,  dx = back(gh A)."""

    @staticmethod
    def forward(ctx, x, A, p):
        x_d, ctx.drop, bits = draw(x, p)
        ctx.save_for_backward(x, A, bits)
        return F.linear(x_d, A)

    @staticmethod
    def backward(ctx, gh):
        x, A, bits = ctx.saved_tensors
        need_x, need_a = ctx.needs_input_grad[:2]
        x_d, back = replay(x, ctx.drop, bits)
        gh2 = gh.reshape(-1, gh.shape[-1])
        dA = torch.mm(gh2.t(), x_d.reshape(-1, x_d.shape[-1])) if need_a else None
        dx = back(torch.matmul(gh, A)) if need_x else None
        return dx, dA, None


def dropped_lora_A(dropout: nn.Module, lora_A: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """lora_A(dropout(x)) on the generic path: through _DroppedLinear where draw/replay apply and A is a plain
    nn.Linear (no bias, no hooks) outside autocast (there the module calls keep autocast's casts), else the
    modules themselves."""
    p = dropout_p(dropout, x)
    if p is None or p == 0.0 or type(lora_A) is not nn.Linear or lora_A.bias is not None:
        return lora_A(dropout(x))
    if lora_A._forward_hooks or lora_A._forward_pre_hooks or "forward" in lora_A.__dict__:
        return lora_A(dropout(x))
    if _module_globals._global_forward_hooks or _module_globals._global_forward_pre_hooks:
        return lora_A(dropout(x))      # global hooks see every module call: keep the calls
    if torch.is_autocast_enabled(x.device.type):
        return lora_A(dropout(x))
    if not torch.is_grad_enabled() or not (x.requires_grad or lora_A.weight.requires_grad):
        return lora_A(dropout(x))
    return _DroppedLinear.apply(x, lora_A.weight, p)
