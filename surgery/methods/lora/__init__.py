"""LoRA (Hu et al. 2021) with rsLoRA and DoRA, for Linear, transformers' Conv1D, Embedding and Conv1d/2d/3d.

    y = W x + b  +  s * B(A(dropout(x)))          A: (r, in), B: (out, r), s = alpha / r (alpha / sqrt(r): rsLoRA)
    DoRA: W' = m * (W + s B A) / ||W + s B A||_row

    config.py  LoraConfig           layer.py   LoraLayer (update, forward, merge)
    spec.py    the registry entry   linear.py / embedding.py / conv.py   the layer types
    model.py   LoraModel            dora.py, fused.py, mixed.py, init.py
    quantized.py  QLoRA layers (bitsandbytes 4-bit / 8-bit bases)   conversion.py  convert_to_lora (any additive adapter)
"""
from .config import LoraConfig
from .conversion import convert_to_lora, save_as_lora
from .model import LoraModel
from .spec import SPEC

__all__ = ["LoraConfig", "LoraModel", "convert_to_lora", "save_as_lora"]
