"""Train-step time with the training features: eager, gradient checkpointing, torch.compile; surgery beside PEFT.

    python benchmarks/bench_train_features.py [--quick] [--repeats N] [--warmup N] [--threads N] [--json out.json]

Model: a real-weight Llama (hidden 512, intermediate 1376, 4 layers, 8 heads, vocab 32000, float32; --quick:
hidden 256, 2 layers, vocab 8000), batch 4 x 128 tokens, causal-LM loss, LoRA r=16 on all-linear; AdamW.
One step = zero_grad + forward + backward + optimizer step. Cases, for each library:

    eager       the plain step
    checkpoint  gradient_checkpointing_enable() (transformers' default: non-reentrant) on the PeftModel
    compile     torch.compile(peft_model) (inductor on CPU); its first step, compilation included, is
                reported apart (inductor caches off: both libraries compile cold), then steady-state steps

Both libraries get identical adapter weights (copied by state-dict key) and the script checks that all six
cases give the same first loss. Timing uses _common.interleaved (every case once per round, rounds during which
other processes used the CPU discarded and re-run); the median of the rounds is reported with the min-max
spread; ratios are surgery / PEFT per case, and each case / eager per library.
"""
from __future__ import annotations

import _common as C  # noqa: I001  (sets warning filters before torch/transformers import)

import copy
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import peft
import surgery
from _models import adamw_step

CASES = ("eager", "checkpoint", "compile")


def base_model(quick: bool) -> LlamaForCausalLM:
    size = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, vocab_size=8000) if quick else \
        dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, vocab_size=32000)
    torch.manual_seed(0)
    config = LlamaConfig(num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                         tie_word_embeddings=False, **size)
    return LlamaForCausalLM(config).float()


def adapted(lib, base, rank: int, source=None):
    # init_lora_weights=False: B is random too, so the first-loss check below covers the adapters
    config = lib.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)
    model = lib.get_peft_model(copy.deepcopy(base), config)
    if source is not None:  # identical adapter weights in both libraries
        theirs = {k: v for k, v in source.state_dict().items() if "lora_" in k}
        mine = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        assert theirs.keys() == mine.keys(), "adapter keys differ between the libraries"
        with torch.no_grad():
            for key, value in theirs.items():
                mine[key].copy_(value)
    return model.train()


def make_step(model, case: str):
    if case == "checkpoint":
        model.gradient_checkpointing_enable()
    return adamw_step(model, torch.compile(model) if case == "compile" else None)


def main() -> int:
    def extra(p):
        p.add_argument("--batch", type=int, default=4)
        p.add_argument("--seq", type=int, default=128)
        p.add_argument("--rank", type=int, default=16)
    args = C.parse_args(__doc__.splitlines()[0], default_repeats=8, quick_repeats=3, default_warmup=2, extra=extra)
    # every compile starts cold, so the second library does not reuse the first one's kernels; a throwaway
    # compile first pays the one-time costs (imports, toolchain checks) that would otherwise fall on the first
    torch._inductor.config.force_disable_caches = True
    torch.compile(lambda x: torch.nn.functional.gelu(x @ x).sum())(torch.ones(4, 4))
    C.header("bench_train_features: train step, eager / gradient checkpointing / torch.compile", args)
    base = base_model(args.quick)
    torch.manual_seed(1)
    batch = torch.randint(0, base.config.vocab_size, (args.batch, args.seq))
    print(f"model: Llama {sum(p.numel() for p in base.parameters()) / 1e6:.1f}M params, batch {args.batch}x"
          f"{args.seq}, all-linear r={args.rank}", flush=True)

    steps, first_loss, compile_s = {}, {}, {}
    for case in CASES:
        torch.manual_seed(2)  # the same random adapters in every case
        reference = adapted(peft, base, args.rank)
        for lib, model in (("PEFT", reference), ("surgery", adapted(surgery, base, args.rank, source=reference))):
            name = f"{lib} {case}"
            steps[name] = make_step(model, case)
            t0 = time.perf_counter()
            first_loss[name] = steps[name](batch).item()  # compiles, for the compile case
            compile_s[name] = time.perf_counter() - t0
            print(f"  {name:20s} first step {compile_s[name]:7.2f} s, loss {first_loss[name]:.6f}", flush=True)
    spread = max(first_loss.values()) - min(first_loss.values())
    print(f"first-step losses agree across the six cases within {spread:.1e}\n", flush=True)
    assert spread < 1e-3, first_loss

    times = C.interleaved({name: (lambda: batch, fn) for name, fn in steps.items()}, args.repeats, args.warmup,
                          disable_gc=False)
    med = {name: C.median(values) for name, values in times.items()}
    rows = []
    for case in CASES:
        s, p = med[f"surgery {case}"], med[f"PEFT {case}"]
        rows.append([case, C.fmt_ms(s), C.fmt_ms(p), f"{s / p:.3f}x", f"{s / med['surgery eager']:.2f}x",
                     f"{p / med['PEFT eager']:.2f}x", C.spread(times[f"surgery {case}"]),
                     C.spread(times[f"PEFT {case}"])])
    print(C.table(["case", "surgery ms", "PEFT ms", "surgery/PEFT", "surgery / eager", "PEFT / eager",
                   "surgery min-max ms", "PEFT min-max ms"], rows))
    print(f"compile time (first compiled step, cold caches): surgery {compile_s['surgery compile']:.1f} s, "
          f"PEFT {compile_s['PEFT compile']:.1f} s")
    C.write_json(args.json, {"benchmark": "train_features", "repeats": args.repeats, "median_s": med, "raw": times,
                             "first_step_s": compile_s, "first_loss": first_loss,
                             "discarded_rounds": C.last_discarded})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
