"""Shared helpers for the surgery test suite (peft is a test-only oracle, imported lazily here)."""
from __future__ import annotations

import contextlib
import copy
import io
import warnings
from typing import Callable

import torch
from torch import nn

import surgery

from . import tiny_models as tm

# The models here are tiny: one intra-op thread per process is fastest, and with `pytest -n 2` on 2 cores more
# threads only oversubscribe the CPU (measured: a tiny T5 forward takes ~0.5 s with 2 threads under load, ~5 ms
# with 1).
torch.set_num_threads(1)


def perturb_adapters(model: nn.Module, seed: int = 1234, std: float = 0.1, biases: bool = True) -> None:
    """Make adapters non-identity, as the golden generator does: lora_* / modules_to_save params ~ N(0, std),
    DoRA magnitudes * (1 + N(0, std)), trainable biases + N(0, std) (unless `biases` is False: then the
    base model's tensors are never touched). Deterministic for a given seed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std
            if "lora_magnitude_vector" in name:
                p.mul_(1 + noise)
            elif "lora_" in name or "modules_to_save" in name:
                p.copy_(noise)
            elif biases and name.endswith("bias") and p.requires_grad:
                p.add_(noise)


def peft_model(base: nn.Module, **config_kwargs):
    """Real peft on a deep copy of `base`."""
    import peft

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**config_kwargs))


def surgery_model(base: nn.Module, **config_kwargs):
    """surgery on a deep copy of `base`."""
    return surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**config_kwargs))


def peft_adapted_names(base: nn.Module, **config_kwargs) -> list[str]:
    """Module paths (relative to the base model) that real peft gives a LoRA layer."""
    model = peft_model(base, **config_kwargs)
    prefix = "base_model.model."
    return sorted(n[len(prefix):] for n, m in model.named_modules() if hasattr(m, "lora_A"))


def with_float64_twin(base: nn.Module, **config_kwargs):
    """(surgery, peft, surgery on a float64 copy of base): equal, perturbed LoRA adapters in all three; the
    float64 model is the reference the half-precision tests measure both libraries' errors against."""
    theirs = peft_model(base, **config_kwargs)
    perturb_adapters(theirs, biases=False)
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**config_kwargs))
    ours.load_state_dict(theirs.state_dict())
    exact = surgery.get_peft_model(copy.deepcopy(base).double(), surgery.LoraConfig(**config_kwargs))
    exact.load_state_dict({k: v.double() for k, v in theirs.state_dict().items()})
    return ours, theirs, exact


def printed_line(model) -> str:
    """What model.print_trainable_parameters() prints (peft or surgery)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        model.print_trainable_parameters()
    return buf.getvalue().strip()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# -- the models the layer/merge tests run on: (builder, inputs, call) ------------------------------------
def _logits(model, inputs):
    return model(**inputs).logits


def _hidden(model, inputs):
    return model(**inputs).last_hidden_state


def _positional(model, inputs):
    return model(inputs)


def _mask() -> torch.Tensor:
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    return mask


def llama_with_biases(seed: int = 0):
    return tm.tiny_llama(seed=seed, attention_bias=True, mlp_bias=True)


MODELS: dict[str, tuple[Callable, Callable[[], object], Callable]] = {
    "llama": (tm.tiny_llama, lambda: {"input_ids": tm.token_batch()}, _logits),
    "llama_bias": (llama_with_biases, lambda: {"input_ids": tm.token_batch()}, _logits),
    "gpt2": (tm.tiny_gpt2, lambda: {"input_ids": tm.token_batch()}, _logits),
    "bert_cls": (tm.tiny_bert_seq_cls, lambda: {"input_ids": tm.token_batch(), "attention_mask": _mask()}, _logits),
    "bert": (tm.tiny_bert, lambda: {"input_ids": tm.token_batch(), "attention_mask": _mask()}, _hidden),
    "t5": (tm.tiny_t5, lambda: {"input_ids": tm.token_batch(), "attention_mask": _mask(),
                                "decoder_input_ids": tm.token_batch(seed=2)}, _logits),
    "conv": (tm.tiny_convnet, lambda: torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)),
             _positional),
    "embedding": (tm.tiny_embed_mlp, lambda: torch.tensor([[0, 3, 5, 7, 0], [9, 0, 0, 11, 49]]), _positional),
}


def run(model, name: str, inputs=None) -> torch.Tensor:
    """Forward `model` as MODELS[name] says, under no_grad."""
    _, make_inputs, call = MODELS[name]
    with torch.no_grad():
        return call(model, make_inputs() if inputs is None else inputs)


def adapter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if getattr(m, "_surgery_adapter_layer", False)]


def write_pickle_payload(path, marker) -> None:
    """A .bin whose unpickling would create `marker` (a file): loaders must refuse it without running it."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(path, "wb") as handle:
        pickle.dump({"x": Payload()}, handle)
