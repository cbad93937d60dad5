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


def exact_logits(model, ids) -> torch.Tensor:
    """The model's logits with its quantized layers in training mode (everything else in eval: no dropout):
    bitsandbytes then computes with the exactly dequantized weight, where its CPU inference kernels round
    activations (8-bit) or compute in bf16 after repacking (4-bit)."""
    from surgery.quantized import backend_of

    model.eval()
    layers = [m for m in model.modules() if backend_of(m) is not None]
    for module in layers:
        module.train()
    out = model(input_ids=ids).logits.detach()
    for module in layers:
        module.eval()
    return out


def train_side_by_side(models, ids, steps: int = 3, lr: float = 1e-2) -> list[list[float]]:
    """AdamW steps on each model in turn, the same seed per step (the same dropout masks); the losses per step."""
    optimizers = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr) for m in models]
    for model in models:
        model.train()
    history = []
    for step in range(steps):
        losses = []
        for model, optimizer in zip(models, optimizers):
            torch.manual_seed(step)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        history.append(losses)
    return history


def twins(bases, config_name: str, **kwargs):
    """(surgery model, peft model) on two equal bases: PEFT draws the adapter (seeded; kwargs ask for non-zero
    init), surgery gets the same tensors by state dict. `config_name`: the config class both libraries share."""
    import peft

    import surgery

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)   # after loading: the first load saves the float model, which draws numbers
        theirs = peft.get_peft_model(bases[0], getattr(peft, config_name)(**kwargs))
        ours = surgery.get_peft_model(bases[1], getattr(surgery, config_name)(**kwargs))
    surgery.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    return ours, theirs
