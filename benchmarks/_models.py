"""Small real-weight Llama models shared by the benchmarks, the AdamW train step they time, and LoRA-weight
copying between libraries."""
from __future__ import annotations

import torch
import transformers


def small_llama(hidden: int = 512, intermediate: int = 1376, layers: int = 4, heads: int = 8,
                vocab: int = 32000, seed: int = 0) -> transformers.LlamaForCausalLM:
    """A randomly initialised Llama in float32 on the CPU (deterministic for a given seed)."""
    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                                   num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab,
                                   max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg)
    return model.float()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter tensor (lora_A / lora_B / lora_magnitude_vector), by PeftModel state_dict key."""
    return {k: v for k, v in model.state_dict().items() if "lora_" in k}


def randomize_adapters(peft_model: torch.nn.Module, seed: int = 1, std: float = 0.02) -> None:
    """Give every LoRA factor random values (B starts at zero, which would make merges trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def adamw_step(model: torch.nn.Module, forward=None):
    """A step function: zero_grad, causal-LM loss forward/backward through `forward` (default: the model
    itself; e.g. its torch.compile wrapper), AdamW (lr 1e-4) over the model's trainable parameters."""
    forward = model if forward is None else forward
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        loss = forward(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def copy_adapters(src: torch.nn.Module, dst: torch.nn.Module) -> int:
    """Copy every adapter tensor from `src` to `dst` by state_dict key; both must hold exactly the same keys."""
    src_state, dst_state = adapter_state(src), adapter_state(dst)
    if set(src_state) != set(dst_state):
        only_src = sorted(set(src_state) - set(dst_state))[:5]
        only_dst = sorted(set(dst_state) - set(src_state))[:5]
        raise AssertionError(f"adapter keys differ: only in source {only_src}, only in destination {only_dst}")
    with torch.no_grad():
        for k, v in src_state.items():
            if dst_state[k].shape != v.shape:
                raise AssertionError(f"{k}: shape {tuple(dst_state[k].shape)} vs {tuple(v.shape)}")
            dst_state[k].copy_(v)
    return len(src_state)
