"""add_adapter cost as adapters pile up on one model, surgery beside PEFT (PEFT grows: peft#981).

    python benchmarks/bench_add_adapter.py [--quick] [--repeats N] [--adapters 100] [--peft-adapters N]

The 45M Llama of _models.small_llama (hidden 512, 4 layers, float32), wrapped by get_peft_model (adapter
"default"), then `add_adapter(f"a{i}", LoraConfig(...))` for i = 0..99, each call timed on its own (garbage
collector off, a collection between calls, untimed). Two configs: LoRA r=8 on q_proj, v_proj (8 layers) and a
heavier all-linear r=16 (28 layers). Every sequence runs `--repeats` times on fresh models and the per-call
median over repeats is reported, then the median of a 3-call window: calls 1-3 ("1st"), 9-11, 49-51, 98-100.
PEFT runs the same sequence (up to --peft-adapters calls: its calls grow, so the heavy case stops at 35 by
default), the two libraries alternating call by call.

At the end (101 adapters on the model) and on a model with 2 adapters: set_adapter, delete_adapter (re-added
untimed) and a forward (1 x 32 tokens, no grad, the "default" adapter active) are timed, interleaved.
Target: surgery's 100th add_adapter <= 1.2x its 1st (median windows). Exit 1 if missed.
"""
from __future__ import annotations

import _common as C  # noqa: I001  (sets warning filters before torch/transformers import)

import copy
import gc
import statistics
import time

import peft
import torch

import surgery
from _models import small_llama

TARGET = 1.2
WINDOWS = {"1st": (1, 3), "10th": (9, 11), "50th": (49, 51), "100th": (98, 100)}
CASES = {
    "q_proj,v_proj r=8": (dict(target_modules=["q_proj", "v_proj"], r=8), 100),
    "all-linear r=16": (dict(target_modules="all-linear", r=16), 35),
}
LIBS = {"surgery": surgery, "PEFT": peft}


def extra_args(parser) -> None:
    parser.add_argument("--adapters", type=int, default=100, help="add_adapter calls per sequence (default 100)")
    parser.add_argument("--peft-adapters", type=int, default=None,
                        help="PEFT's calls per sequence (default: 100 for q,v; 35 for all-linear)")


def window(per_call: list[float], first: int, last: int) -> float:
    """The median of calls first..last (1-based), or of the calls there are."""
    part = per_call[first - 1:last]
    return statistics.median(part) if part else float("nan")


def add_sequence(models: dict, kw: dict, counts: dict) -> dict[str, list[float]]:
    """Time each add_adapter on each model, alternating the libraries call by call (order rotated)."""
    times = {name: [] for name in models}
    names = list(models)
    for i in range(max(counts.values())):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            if i >= counts[name]:
                continue
            lib = LIBS[name]
            config = lib.LoraConfig(**kw)
            gc.collect()
            gc.disable()
            try:
                t0 = time.perf_counter()
                models[name].add_adapter(f"a{i}", config)
                times[name].append(time.perf_counter() - t0)
            finally:
                gc.enable()
    return times


def wrapped(base, name: str, kw: dict):
    lib = LIBS[name]
    return lib.get_peft_model(copy.deepcopy(base), lib.LoraConfig(**kw))


def check_same(models: dict) -> None:
    """Both libraries hold the same adapters and parameter names at the end of a sequence."""
    s, p = models["surgery"], models["PEFT"]
    assert list(s.peft_config) == list(p.peft_config)[:len(s.peft_config)] or \
        list(p.peft_config) == list(s.peft_config)[:len(p.peft_config)], "adapter names differ"
    shared = set(s.peft_config) & set(p.peft_config)
    keys = {n: {k for k in m.state_dict() if any(f".{a}." in k for a in shared)} for n, m in models.items()}
    assert keys["surgery"] == keys["PEFT"], "state dict keys differ"


def op_cases(models_few: dict, models_many: dict, ids: torch.Tensor, kw: dict) -> dict:
    """set_adapter / delete_adapter (re-added untimed) / forward on both models of both libraries."""
    cases = {}
    for label, models in (("few", models_few), ("many", models_many)):
        for name, model in models.items():
            victim = f"a{(len(model.peft_config) - 1) // 2}"   # a0 of 2 adapters, a50 of 101
            def readd(model=model, victim=victim, lib=LIBS[name]):
                if victim not in model.peft_config:
                    model.add_adapter(victim, lib.LoraConfig(**kw))
                model.set_adapter("default")
                return model

            cases[f"{name} set_adapter {label}"] = (readd, lambda m, v=victim: m.set_adapter(v))
            cases[f"{name} delete_adapter {label}"] = (readd, lambda m, v=victim: m.delete_adapter(v))

            def fwd(m):
                with torch.no_grad():
                    m(input_ids=ids)
            cases[f"{name} forward {label}"] = (readd, fwd)
    return cases


def main():
    args = C.parse_args(__doc__.splitlines()[0], default_repeats=3, quick_repeats=1, default_warmup=0,
                        extra=extra_args)
    C.header("bench_add_adapter: add_adapter as adapters pile up (45M Llama)", args)
    base = small_llama()
    ids = torch.randint(0, base.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    rows, op_rows, results, all_met = [], [], {}, True
    for label, (kw, peft_default) in CASES.items():
        counts = {"surgery": args.adapters,
                  "PEFT": min(args.adapters, args.peft_adapters if args.peft_adapters is not None else peft_default)}
        runs = {name: [] for name in LIBS}
        models = None
        C.wait_for_quiet()
        for _ in range(args.repeats):
            models = {name: wrapped(base, name, kw) for name in LIBS}
            for name, per_call in add_sequence(models, kw, counts).items():
                runs[name].append(per_call)
        check_same(models)
        summary = {}
        for name, seqs in runs.items():
            per_call = [statistics.median(calls) for calls in zip(*seqs)]
            w = {k: window(per_call, *span) for k, span in WINDOWS.items()}
            last = [k for k, (first, _) in WINDOWS.items() if first <= len(per_call)][-1]
            ratio = w[last] / w["1st"]
            summary[name] = {"per_call_s": per_call, "windows_s": w, "last_window": last, "ratio": ratio,
                             "total_s": sum(per_call), "calls": len(per_call)}
            met = "" if name != "surgery" else C.verdict(ratio, TARGET)
            if name == "surgery" and last == "100th":
                all_met &= ratio <= TARGET
            rows.append([label, name, len(per_call), *(C.fmt_ms(w[k]) for k in WINDOWS),
                         f"{ratio:.2f}x ({last}/1st)", f"{sum(per_call):.2f}", met])
        print(f"  {label}: done ({args.repeats} sequence(s))", flush=True)

        # set / delete / forward with 2 adapters vs all of them (each library's model of the last sequence)
        many = models
        few = {}
        for name in many:
            few[name] = wrapped(base, name, kw)
            few[name].add_adapter("a0", LIBS[name].LoraConfig(**kw))
        for m in (*many.values(), *few.values()):
            m.eval()
        times = C.interleaved(op_cases(few, many, ids, kw), args.repeats * 5, warmup=1)
        ops = {}
        for name in many:
            for op in ("set_adapter", "delete_adapter", "forward"):
                small, big = (C.median(times[f"{name} {op} {n}"]) for n in ("few", "many"))
                n_many = len(many[name].peft_config)
                ops[f"{name} {op}"] = {"2_adapters_s": small, "many_adapters_s": big, "many": n_many}
                op_rows.append([label, name, op, C.fmt_ms(small), f"{C.fmt_ms(big)} ({n_many} adapters)",
                                f"{big / small:.2f}x"])
        results[label] = {"add_adapter": summary, "ops": ops, "discarded_rounds": C.last_discarded}
        del models, many, few
        gc.collect()
    print()
    print(C.table(["config", "library", "calls", *(f"{k} add ms" for k in WINDOWS), "growth", "total s",
                   f"target <= {TARGET}x"], rows))
    print()
    print(C.table(["config", "library", "call", "2 adapters ms", "all adapters ms", "ratio"], op_rows))
    C.write_json(args.json, {"environment": C.environment(), "target": TARGET, "results": results})
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
