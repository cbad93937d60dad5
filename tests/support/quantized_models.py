"""Tiny models loaded through transformers with bitsandbytes quantization on the CPU (QLoRA tests, benchmarks).

A seeded float model is saved once per process and reloaded with a BitsAndBytesConfig, as a user loads one.
"""
from __future__ import annotations

import functools
import tempfile
import warnings

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from . import tiny_models as tm

BUILDERS = {"llama": tm.tiny_llama, "gpt2": tm.tiny_gpt2}
# bitsandbytes' CPU inference repacking of 4-bit weights needs widths of at least one 64-value block
SIZES = {"llama": {"hidden_size": 64, "intermediate_size": 128}, "gpt2": {"n_embd": 64}}


@functools.lru_cache(maxsize=None)
def _saved(family: str, dtype: torch.dtype = torch.float32, **sizes) -> str:
    path = tempfile.mkdtemp(prefix=f"surgery-{family}-")
    BUILDERS[family](**dict(sizes)).to(dtype).save_pretrained(path)
    return path


def bnb_config(kind: str, compute_dtype: torch.dtype = torch.float32) -> BitsAndBytesConfig:
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_compute_dtype=compute_dtype)


def quantized(kind: str = "nf4", family: str = "llama", dtype: torch.dtype = torch.float32,
              compute_dtype: torch.dtype = torch.float32, **sizes):
    """The tiny `family` model quantized as `kind` ("nf4", "fp4" or "int8") on the CPU, in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sizes = {**SIZES[family], **sizes}
        model = AutoModelForCausalLM.from_pretrained(_saved(family, dtype, **sizes), dtype=dtype,
                                                     quantization_config=bnb_config(kind, compute_dtype),
                                                     device_map="cpu")
    return model.eval()
