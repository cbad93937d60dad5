"""Memory of one training step with LoRA on fused MoE experts (target_parameters), surgery vs PEFT, one process.

    python benchmarks/bench_moe_target_parameters.py [--quick] [--experts 8] [--hidden 256] [--layers 2]

Model: Qwen3-MoE from a config (random weights, float32): 8 experts, hidden 256, expert width 512, top-2,
2 layers, vocab 512; LoRA r=8 on mlp.experts.gate_up_proj and mlp.experts.down_proj (3-D parameters), the same
adapter tensors in both libraries. One step = forward + loss + backward on a 2 x 64 batch.

Figures (each relative to the bare base model's step, so only what the adapter adds counts):
  saved     bytes autograd keeps for backward (torch.autograd.graph.saved_tensors_hooks, storages counted once)
            deterministic: the figure the test suite asserts
  peak      the CPU allocator's peak during the step (torch.profiler memory events, in time order)
  dense     the targeted weights of one layer, E x (2I x H + H x I) x 4 bytes: one extra "dense copy"
  step      wall time of one step (median of repeats + 2, interleaved; informative, not a target)
Target: surgery's extra saved bytes <= 1 dense copy per layer plus the factors (W' is kept for the experts' own
backward, which needs it), and neither figure above PEFT's. Also checks the losses agree (1e-5).
"""
from __future__ import annotations

import _common as C  # noqa: I001  (sets warning filters before torch/transformers import)

import copy
import time

import peft
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

import surgery

TARGETS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def build(experts: int, hidden: int, layers: int) -> torch.nn.Module:
    config = Qwen3MoeConfig(vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden,
                            moe_intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=hidden // 4, num_experts=experts, num_experts_per_tok=2,
                            max_position_embeddings=256)
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


def step(model, batch) -> torch.Tensor:
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    return loss.detach()


def saved_bytes(model, batch) -> int:
    """Bytes of the tensors autograd saves for backward in one step, each storage once, the model's own
    parameters left out (they exist whether saved or not)."""
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    return sum(storages.values())


def peak_bytes(model, batch) -> int:
    """The peak of the bytes allocated during one step (profiler memory timeline, every allocation and free)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step(model, batch)
    from torch.profiler._memory_profiler import MemoryProfileTimeline   # private, but exact: alloc / free events
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return max(sum(row) for row in sizes)


def frozen_with_input_grads(model) -> torch.nn.Module:
    """The bare base as a baseline: frozen, its embeddings' output requiring grad, so backward runs through every
    layer and saves the activations, as it does below the first adapted layer of a LoRA model."""
    model.requires_grad_(False)
    model.enable_input_require_grads()
    return model


def main():
    def extra(p):
        p.add_argument("--experts", type=int, default=8)
        p.add_argument("--hidden", type=int, default=256)
        p.add_argument("--layers", type=int, default=2)
        p.add_argument("--rank", type=int, default=8)
    args = C.parse_args(__doc__.splitlines()[0], default_repeats=3, quick_repeats=1, extra=extra)
    base = build(args.experts, args.hidden, args.layers)
    kwargs = dict(target_modules=[], target_parameters=TARGETS, r=args.rank, init_lora_weights=False)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**kwargs))
    surgery.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    batch = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(1))

    for model in (theirs, ours):
        model.get_base_model().enable_input_require_grads()
    models = {"base": frozen_with_input_grads(base), "PEFT": theirs, "surgery": ours}
    losses = {name: step(m, batch).item() for name, m in models.items()}
    saved = {name: saved_bytes(m, batch) for name, m in models.items()}
    peaks = {name: min(peak_bytes(m, batch) for _ in range(args.repeats)) for name, m in models.items()}
    times = {name: [] for name in models}
    for _ in range(args.repeats + 2):   # interleaved, median: drifts hit every case alike
        for name, m in models.items():
            start = time.perf_counter()
            step(m, batch)
            times[name].append(time.perf_counter() - start)
    for m in models.values():
        m.zero_grad(set_to_none=True)

    experts = base.model.layers[0].mlp.experts   # the bare base: PEFT's and surgery's are wrapped
    dense = (experts.gate_up_proj.numel() + experts.down_proj.numel()) * 4
    mib = 2 ** 20
    rows = []
    for name in ("PEFT", "surgery"):
        extra_saved, extra_peak = saved[name] - saved["base"], peaks[name] - peaks["base"]
        rows.append([name, f"{losses[name]:.6f}", f"{extra_saved / mib:.2f}", f"{extra_saved / dense / args.layers:.2f}",
                     f"{extra_peak / mib:.2f}", f"{extra_peak / dense / args.layers:.2f}",
                     C.fmt_ms(C.median(times[name]))])
    print(C.environment())
    print(f"Qwen3-MoE: {args.experts} experts, hidden {args.hidden}, {args.layers} layers, r={args.rank}; one dense "
          f"copy of a layer's targeted weights = {dense / mib:.2f} MiB")
    print(C.table(["library", "loss", "extra saved MiB", "saved / dense / layer", "extra peak MiB",
                   "peak / dense / layer", "step ms (median)"], rows))
    print(f"bare base step: {C.fmt_ms(C.median(times['base']))} ms")
    ratio_saved = (saved["surgery"] - saved["base"]) / max(saved["PEFT"] - saved["base"], 1)
    ratio_peak = (peaks["surgery"] - peaks["base"]) / max(peaks["PEFT"] - peaks["base"], 1)
    print(f"surgery / PEFT: extra saved {ratio_saved:.2f}x, extra peak {ratio_peak:.2f}x; "
          f"|loss diff| = {abs(losses['surgery'] - losses['PEFT']):.2e} (target <= 1e-5)")
    factors = sum(p.numel() * 4 for n, p in ours.named_parameters() if "lora_" in n) / args.layers
    bound = (dense + 2 * factors) / dense   # W' plus the factors and their per-expert views
    per_layer = (saved["surgery"] - saved["base"]) / dense / args.layers
    print(f"surgery keeps {per_layer:.2f} dense copies per layer for backward (W' and the factors; bound "
          f"{bound:.2f}): {C.verdict(per_layer, bound)}; PEFT keeps "
          f"{(saved['PEFT'] - saved['base']) / dense / args.layers:.2f}")

if __name__ == "__main__":
    main()
