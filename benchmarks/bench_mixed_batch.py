"""Mixed-batch inference (one adapter per sample) vs a single-adapter forward, surgery beside PEFT.

Small Llama (hidden 512, 4 layers), batch 16 x 64, LoRA r=8 on q_proj/v_proj, 8 adapters, each sample
naming one adapter (two samples per adapter). Prints each library's mixed/single ratio (target <= 1.05x
for surgery) and checks surgery's mixed logits against per-adapter forwards.

    python benchmarks/bench_mixed_batch.py [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import peft
import surgery

N_ADAPTERS = 8


def build(lib, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=8, vocab_size=32000)
    base = LlamaForCausalLM(cfg).eval()
    model = None
    for i in range(N_ADAPTERS):
        config = lib.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                                task_type="CAUSAL_LM")
        if model is None:
            model = lib.get_peft_model(base, config, adapter_name=f"a{i}")
        else:
            model.add_adapter(f"a{i}", config)
    model.set_adapter("a0")
    return model.eval()


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    repeats = 5 if args.quick else 20
    x = torch.randint(0, 32000, (16, 64), generator=torch.Generator().manual_seed(0))
    names = [f"a{i % N_ADAPTERS}" for i in range(16)]
    results = {}
    models = {"surgery": build(surgery), "peft": build(peft)}
    # same adapter weights in both libraries
    models["surgery"].load_state_dict(models["peft"].state_dict())
    with torch.inference_mode():
        for lib, model in models.items():
            single = lambda: model(input_ids=x)  # noqa: E731
            mixed = lambda: model(input_ids=x, adapter_names=names)  # noqa: E731
            results[lib] = (timed(single, repeats), timed(mixed, repeats))
        ref = torch.cat([_one(models["surgery"], x[i:i + 1], n) for i, n in enumerate(names)])
        got = models["surgery"](input_ids=x, adapter_names=names).logits
        theirs = models["peft"](input_ids=x, adapter_names=names).logits
    print(f"{'library':8s} {'single (s)':>11s} {'mixed x8 (s)':>13s} {'mixed/single':>13s}")
    for lib, (single, mixed) in results.items():
        print(f"{lib:8s} {single:11.4f} {mixed:13.4f} {mixed / single:12.3f}x")
    print(f"surgery mixed vs per-adapter forwards: max abs diff {(got - ref).abs().max().item():.2e}")
    print(f"surgery mixed vs peft mixed: max abs diff {(got - theirs).abs().max().item():.2e}")
    print(f"surgery mixed / peft mixed: {results['surgery'][1] / results['peft'][1]:.3f}x")


def _one(model, x, name):
    model.set_adapter(name)
    return model(input_ids=x).logits


if __name__ == "__main__":
    main()
