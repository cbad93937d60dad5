"""The quantizers LoftQ alternates with the SVD: a weight's round trip through the quantized format,
dequant(quant(W)), in plain torch, so LoftQ runs on any device and without bitsandbytes.

    4 bits (nf4): blocks of 64 consecutive values, a = absmax(block);
                  q = nearest NF4 code to clamp(w * (1 / a), -1, 1)  (the code's midpoints as bounds),  w' = code[q] * a
    8 bits (int8): rows, w taken in float16; a = absmax(row);  q = round(w * (127 / a)),  w' = q * a * (1 / 127)

The arithmetic is bitsandbytes' (0.50: quantize_4bit / dequantize_4bit with blocksize 64 and no double
quantization, as PEFT's loftq_init calls them; Int8Params' int8_vectorwise_quant / int8_vectorwise_dequant), op
for op, so results equal the library's (tests/methods/lora/test_loftq.py compares them).
"""
from __future__ import annotations

import torch

# The NormalFloat4 code of QLoRA (Dettmers et al. 2023): quantiles of N(0, 1), scaled to [-1, 1], with an exact 0.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
NF4_BLOCK = 64
_INT8_INVERSE = 7.874015718698502e-3   # 1 / 127, bitsandbytes' constant


def nf4_round_trip(weight: torch.Tensor) -> torch.Tensor:
    """dequant(quant(weight)) in NF4 with one absmax per 64 values (float32, weight's shape)."""
    flat = weight.reshape(-1).float()
    n = flat.numel()
    full = n - n % NF4_BLOCK
    blocks = flat[:full].reshape(-1, NF4_BLOCK)
    absmax = blocks.abs().max(dim=-1)[0]
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if full < n:   # the last, partial block
        tail_max = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, tail_max.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / tail_max, -1, 1)])
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=flat.device)
    values = code[torch.bucketize(scaled, (code[:-1] + code[1:]) / 2, out_int32=True)]
    out = torch.empty_like(flat)
    out[:full] = (values[:full].view(-1, NF4_BLOCK) * absmax[: full // NF4_BLOCK].view(-1, 1)).reshape(-1)
    if full < n:
        out[full:] = values[full:] * absmax[-1]
    return out.reshape(weight.shape)


def int8_round_trip(weight: torch.Tensor) -> torch.Tensor:
    """dequant(quant(weight)) in LLM.int8()'s row-wise absmax int8 (float32, weight's (out, in) shape)."""
    half = weight.to(torch.float16)
    row_max = torch.max(half.abs(), dim=1).values.float()
    q = torch.round(half * (127.0 / row_max.unsqueeze(-1))).to(torch.int8)
    return q * row_max.view(-1, 1) * _INT8_INVERSE


ROUND_TRIPS = {4: nf4_round_trip, 8: int8_round_trip}
