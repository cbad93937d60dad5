"""Inference speed: base model vs LoRA unmerged vs LoRA merged (merge_adapter), surgery vs PEFT.

    python benchmarks/bench_inference.py [--quick]

Model: the real-weight Llama of bench_train_step (hidden 512, intermediate 1376, 4 layers, 8 heads,
vocab 32000, float32), LoRA r=16 on all-linear with random (non-zero) factors, identical in both libraries.
Two workloads under torch.inference_mode():
  * throughput: batch 4 x 128 tokens, one forward per sample;
  * latency:    batch 1 x 8 tokens, 20 forwards per sample (per-layer Python overhead shows here).
Expectation: merged == base speed (the adapter is folded into the weights); unmerged costs a little more.
"""
from __future__ import annotations

import _common as C  # noqa: I001  (sets warning filters before torch/transformers import)

import copy

import peft
import torch

import surgery
from _models import copy_adapters, randomize_adapters, small_llama

MERGED_TOLERANCE = 1.03   # merged / base: "equal to base speed" within measurement noise


def main():
    def extra(p):
        p.add_argument("--rank", type=int, default=16)
    args = C.parse_args(__doc__.splitlines()[0], default_repeats=15, quick_repeats=5, default_warmup=2, extra=extra)
    C.header("bench_inference: forward under inference_mode", args)
    base = small_llama().eval()
    models = {"base": copy.deepcopy(base)}
    for merged in (False, True):
        p_model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(target_modules="all-linear", r=args.rank))
        s_model = surgery.get_peft_model(copy.deepcopy(base),
                                         surgery.LoraConfig(target_modules="all-linear", r=args.rank))
        randomize_adapters(p_model)
        copy_adapters(p_model, s_model)
        if merged:
            p_model.merge_adapter()
            s_model.merge_adapter()
        tag = "merged" if merged else "unmerged"
        models[f"surgery {tag}"] = s_model.eval()
        models[f"PEFT {tag}"] = p_model.eval()

    torch.manual_seed(123)
    workloads = {"throughput 4x128": (torch.randint(0, 32000, (4, 128)), 1),
                 "latency 1x8 (x20)": (torch.randint(0, 32000, (1, 8)), 20)}

    # correctness: same logits across libraries; merged ~= unmerged; adapter changes the output
    x = workloads["throughput 4x128"][0]
    with torch.inference_mode():
        out = {k: m(input_ids=x).logits for k, m in models.items()}
    diffs = {
        "surgery unmerged vs PEFT unmerged": (out["surgery unmerged"] - out["PEFT unmerged"]).abs().max().item(),
        "surgery merged vs PEFT merged": (out["surgery merged"] - out["PEFT merged"]).abs().max().item(),
        "surgery merged vs surgery unmerged": (out["surgery merged"] - out["surgery unmerged"]).abs().max().item(),
        "surgery unmerged vs base (adapter effect)": (out["surgery unmerged"] - out["base"]).abs().max().item(),
    }
    for k, v in diffs.items():
        print(f"max |logits diff| {k}: {v:.2e}")
    print(flush=True)

    results, rows, all_met = {}, [], True
    for wname, (inp, inner) in workloads.items():
        def run(model, inp=inp, inner=inner):
            with torch.inference_mode():
                for _ in range(inner):
                    model(input_ids=inp)
        cases = {k: (None, lambda _state, m=m: run(m)) for k, m in models.items()}
        times = C.interleaved(cases, args.repeats, args.warmup, disable_gc=False)
        med = {k: C.median(v) for k, v in times.items()}
        for k in models:
            rel = C.paired_ratio(times, k, "base")
            lib = k.split()[0]
            vs = f"{C.paired_ratio(times, k, k.replace('surgery', 'PEFT')):.3f}x" if lib == "surgery" else ""
            target = ""
            if k == "surgery merged":
                met = rel <= MERGED_TOLERANCE
                all_met &= met
                target = C.verdict(rel, MERGED_TOLERANCE)
            rows.append([wname, k, C.fmt_ms(med[k] / inner), C.spread([t / inner for t in times[k]]),
                         f"{rel:.3f}x", vs, target])
        results[wname] = {"median_s_per_forward": {k: v / inner for k, v in med.items()},
                          "over_base_paired": {k: C.paired_ratio(times, k, "base") for k in models},
                          "discarded_rounds": C.last_discarded}
    print(C.table(["workload", "model", "ms / forward", "min-max ms", "/ base (paired)", "surgery/PEFT (paired)",
                   f"merged target <= {MERGED_TOLERANCE}x base"], rows))
    print("\n'paired': the median over rounds of the ratio of two cases timed in the same round.")
    C.write_json(args.json, {"benchmark": "inference", "repeats": args.repeats, "correctness": diffs,
                             "results": results})
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
