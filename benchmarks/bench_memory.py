"""Activation memory of a training step: surgery vs PEFT vs the frozen bound, one process (RSS: one per case).

    python benchmarks/bench_memory.py [--quick] [--rss] [--rss-steps 20] [--methods ...] [--json out.json]
    (--quick: gradient checkpointing off only)

Model: the 45M Llama of bench_train_step (hidden 512, intermediate 1376, 4 layers, vocab 32000, float32), batch
4 x 128, causal-LM loss, r=16 on all-linear (lm_head excluded); QLoRA: the same model saved and loaded by
transformers as bitsandbytes nf4 (float32 compute) on the CPU. Cases, for each library, each with gradient
checkpointing off and on (gradient_checkpointing_enable(): transformers' default, non-reentrant):
    LoRA, LoRA + lora_dropout=0.05, DoRA, DoRA + dropout 0.05, QLoRA, QLoRA + dropout 0.05, and "DoRA
    recompute": surgery's DoRA with fused_dora.KEEP_OUTPUT = False (y recomputed in backward; PEFT as "DoRA")
and the bound: the bare base, frozen, its input embeddings' output requiring grad (backward through every
layer, no weight gradient): what any adapter step must keep at least (the 4-bit base for QLoRA).
Both libraries get identical adapter weights; the first losses (same seed, so the same dropout masks) agree.

Figures:
  saved   bytes of the tensors autograd still keeps for backward at the end of one training forward
          (saved_tensors_hooks, each storage once, the model's parameters and buffers left out): deterministic.
          With checkpointing, what a checkpointed layer saves goes to checkpoint's own hooks, not ours: the
          figure is what is kept across layers (their inputs, the head).
  peak    the allocator's peak during one forward + backward (profiler memory timeline, every allocation and
          free in time order), of the bytes allocated in the step (recomputation included)
  rss     (--rss) peak resident set (VmHWM) of a fresh process over --rss-steps AdamW steps, minus its resident
          set (VmRSS) just before the first step: the heap the steps add, allocator caching included
Targets (checkpointing off; surgery): LoRA + dropout saved <= 1.02x LoRA (PEFT 1.31x); DoRA saved <= 1.10x
LoRA (PEFT 1.80x); LoRA saved <= PEFT's LoRA. Exit 1 if one is missed.
"""
from __future__ import annotations

import _common as C  # noqa: I001  (sets warning filters before torch/transformers import)

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile

import peft
import torch
from torch.profiler import ProfilerActivity, profile

import surgery
from surgery.profiling import saved_activation_bytes
from _models import copy_adapters, randomize_adapters, small_llama

METHODS = {   # name -> (LoraConfig kwargs, 4-bit base)
    "LoRA": (dict(), False),
    "LoRA drop": (dict(lora_dropout=0.05), False),
    "DoRA": (dict(use_dora=True), False),
    "DoRA drop": (dict(use_dora=True, lora_dropout=0.05), False),
    "DoRA recompute": (dict(use_dora=True), False),       # surgery with fused_dora.KEEP_OUTPUT = False
    "QLoRA": (dict(), True),
    "QLoRA drop": (dict(lora_dropout=0.05), True),
}
MIB = 2 ** 20
SWITCHED = {"DoRA recompute": ("KEEP_OUTPUT", False)}   # case -> a switch of surgery's fused_dora for it


@contextlib.contextmanager
def switched(method: str):
    """surgery's fused_dora switch for this case, set while the case runs (PEFT has none: unaffected)."""
    import surgery.methods.lora.fused_dora as fused_dora
    name, value = SWITCHED.get(method, (None, None))
    before = getattr(fused_dora, name) if name else None
    if name:
        setattr(fused_dora, name, value)
    try:
        yield
    finally:
        if name:
            setattr(fused_dora, name, before)


def saved_bytes(model, batch) -> int:
    """surgery.profiling.saved_activation_bytes of one causal-LM training forward (seed 0: same dropout masks)."""
    def step():
        torch.manual_seed(0)
        return model(input_ids=batch, labels=batch).loss
    saved = saved_activation_bytes(model, step)
    model.zero_grad(set_to_none=True)
    return saved


def peak_bytes(model, batch) -> int:
    """The allocator's peak during one forward + backward (see bench_moe_target_parameters.py)."""
    torch.manual_seed(0)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        model(input_ids=batch, labels=batch).loss.backward()
    model.zero_grad(set_to_none=True)
    from torch.profiler._memory_profiler import MemoryProfileTimeline   # private, but exact: alloc / free events
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return max(sum(row) for row in sizes)


def _base(quantized: bool, path: str):
    if not quantized:
        return small_llama()
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb, device_map="cpu")


def build(lib: str, method: str, checkpointing: bool, path: str, source=None):
    """A model in training mode: 'bound' (frozen bare base, input grads) or an adapter method of one library;
    source: a model whose adapter weights to copy (the other library's)."""
    kwargs, quantized = METHODS.get(method, (dict(), method == "bound 4-bit"))
    base = _base(quantized, path)
    if lib == "bound":
        model = base.requires_grad_(False)
        model.get_input_embeddings().register_forward_hook(lambda mod, inp, out: out.requires_grad_(True))
    else:
        module = surgery if lib == "surgery" else peft
        model = module.get_peft_model(base, module.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                              **kwargs))
        if source is None:
            randomize_adapters(model)
        else:
            copy_adapters(source, model)
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model.train()


def batch_for(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (4, 128), generator=torch.Generator().manual_seed(0))


def rss_child(argv) -> None:
    """In a fresh process: build one case, run the steps, print {"hwm": .., "start": ..} (bytes)."""
    lib, method, checkpointing, path, steps = argv[0], argv[1], argv[2] == "1", argv[3], int(argv[4])
    torch.set_num_threads(2)
    with switched(method):
        model = build(lib, method, checkpointing, path)
        batch = batch_for(model.config.vocab_size)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None

        def status(key):
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
        start = status("VmRSS:")
        for _ in range(steps):
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    print(json.dumps({"hwm": status("VmHWM:"), "start": start}))


def rss_bytes(lib, method, checkpointing, path, steps) -> int:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", lib, method, "1" if checkpointing else "0", path,
           str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    got = json.loads(out)
    return got["hwm"] - got["start"]


def main() -> int:
    def extra(p: argparse.ArgumentParser):
        p.add_argument("--rss", action="store_true", help="also measure peak RSS, one fresh process per case")
        p.add_argument("--rss-steps", type=int, default=20)
        p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    args = C.parse_args(__doc__.splitlines()[0], default_repeats=1, quick_repeats=1, extra=extra)
    modes = (False,) if args.quick else (False, True)     # --quick: checkpointing off only
    C.header("bench_memory: activations kept for backward, allocator peak, RSS", args)
    path = tempfile.mkdtemp(prefix="bench-memory-")
    small_llama().save_pretrained(path)          # the 4-bit base loads from here
    batch = batch_for(32000)
    print("model: Llama 45.4M (float32; QLoRA: nf4), batch 4x128, r=16 all-linear, dropout 0.05 where named\n",
          flush=True)
    results, rows = {}, []
    for checkpointing in modes:
        bounds = {}
        for bound in ("bound", "bound 4-bit"):
            if bound == "bound 4-bit" and not any(METHODS[m][1] for m in args.methods):
                continue
            model = build("bound", bound, checkpointing, path)
            bounds[bound] = (saved_bytes(model, batch), peak_bytes(model, batch))
            del model
        for method in args.methods:
            theirs = build("PEFT", method, checkpointing, path)
            ours = build("surgery", method, checkpointing, path, source=theirs)
            losses = []
            for model in (ours, theirs):
                torch.manual_seed(0)
                with torch.no_grad():
                    losses.append(model(input_ids=batch, labels=batch).loss.item())
            entry = {"loss_diff": abs(losses[0] - losses[1])}
            for lib, model in (("surgery", ours), ("PEFT", theirs)):
                with switched(method):
                    entry[lib] = {"saved": saved_bytes(model, batch), "peak": peak_bytes(model, batch)}
                if args.rss:
                    entry[lib]["rss"] = rss_bytes(lib, method, checkpointing, path, args.rss_steps)
            del ours, theirs
            results[(method, checkpointing)] = entry
        for bound, (saved, peak) in bounds.items():
            rss = rss_bytes("bound", bound, checkpointing, path, args.rss_steps) if args.rss else None
            results[(bound, checkpointing)] = {"bound": {"saved": saved, "peak": peak, "rss": rss}}
    print(C.environment())
    headers = ["checkpointing", "case", "surgery saved MiB", "PEFT saved MiB", "saved / LoRA (surgery, PEFT)",
               "surgery / PEFT saved", "surgery peak MiB", "PEFT peak MiB"] + (
        ["surgery RSS MiB", "PEFT RSS MiB"] if args.rss else []) + ["|loss diff|"]
    for (case, checkpointing), entry in results.items():
        ck = "on" if checkpointing else "off"
        if "bound" in entry:
            b = entry["bound"]
            rows.append([ck, f"{case} (frozen)", f"{b['saved'] / MIB:.1f}", "", "", "", f"{b['peak'] / MIB:.1f}", ""]
                        + ([f"{b['rss'] / MIB:.1f}", ""] if args.rss else []) + [""])
            continue
        ref_name = "QLoRA" if METHODS[case][1] else "LoRA"
        ref = results.get((ref_name, checkpointing))
        s, p = entry["surgery"], entry["PEFT"]
        rel = f"{s['saved'] / ref['surgery']['saved']:.3f}x, {p['saved'] / ref['PEFT']['saved']:.3f}x" if ref else ""
        rows.append([ck, case, f"{s['saved'] / MIB:.1f}", f"{p['saved'] / MIB:.1f}", rel,
                     f"{s['saved'] / p['saved']:.3f}x", f"{s['peak'] / MIB:.1f}", f"{p['peak'] / MIB:.1f}"]
                    + ([f"{s['rss'] / MIB:.1f}", f"{p['rss'] / MIB:.1f}"] if args.rss else [])
                    + [f"{entry['loss_diff']:.1e}"])
    print(C.table(headers, rows))
    checks, all_met = [], True

    def target(name, value, limit):
        nonlocal all_met
        all_met &= value <= limit
        checks.append({"target": name, "value": value, "limit": limit})
        print(f"{name}: {value:.3f}x  {C.verdict(value, limit)}")
    print()
    lora = results.get(("LoRA", False))
    if lora and ("LoRA drop", False) in results:
        target("surgery LoRA+dropout saved / LoRA", results[("LoRA drop", False)]["surgery"]["saved"]
               / lora["surgery"]["saved"], 1.02)
    if lora and ("DoRA", False) in results:
        target("surgery DoRA saved / LoRA", results[("DoRA", False)]["surgery"]["saved"] / lora["surgery"]["saved"],
               1.10)
    if lora and ("DoRA recompute", False) in results:
        value = results[("DoRA recompute", False)]["surgery"]["saved"] / lora["surgery"]["saved"]
        print(f"(surgery DoRA with KEEP_OUTPUT = False saved / LoRA: {value:.3f}x; its step time: "
              "bench_train_step.py --dora-recompute)")
    if lora:
        target("surgery LoRA saved / PEFT LoRA", lora["surgery"]["saved"] / lora["PEFT"]["saved"], 1.0)
    C.write_json(args.json, {"benchmark": "memory", "targets": checks,
                             "results": {f"{c} ckpt={k}": v for (c, k), v in results.items()}})
    return 0 if all_met else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        rss_child(sys.argv[2:])
    else:
        raise SystemExit(main())
