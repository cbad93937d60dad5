"""merge_and_unload speed on a real-weight ~0.5B Llama, surgery vs PEFT, with an output check.

    python benchmarks/bench_merge.py [--quick] [--dora]

Model: Llama, hidden 2048, intermediate 5632, 8 layers, 16 heads, vocab 32000, float32 (built once; every
repeat deep-copies it and wraps the copy, untimed). LoRA r=16 on all-linear with random non-zero factors,
the same tensors in both libraries (copied by state_dict key). Timed: merge_and_unload() alone.
Target: surgery <= 0.4x PEFT. The check compares surgery's merged model with PEFT's merged model
(max |weight diff| and max |logits diff| on a 2 x 32 batch).
"""
from __future__ import annotations

import _common as C  # noqa: I001  (sets warning filters before torch/transformers import)

import copy

import peft
import torch

import surgery
from _models import adapter_state, n_params, randomize_adapters, small_llama

TARGET = 0.4


def main():
    def extra(p):
        p.add_argument("--rank", type=int, default=16)
        p.add_argument("--dora", action="store_true", help="also time DoRA (use_dora=True) merges")
    args = C.parse_args(__doc__.splitlines()[0], default_repeats=5, quick_repeats=2, default_warmup=1, extra=extra)
    C.header("bench_merge: merge_and_unload", args)
    base = small_llama(hidden=2048, intermediate=5632, layers=8, heads=16, vocab=32000)
    base.eval()
    print(f"model: Llama {n_params(base) / 1e6:.0f}M params (hidden 2048, inter 5632, 8 layers), "
          f"all-linear r={args.rank}", flush=True)
    torch.manual_seed(7)
    x = torch.randint(0, 32000, (2, 32))

    variants = [("LoRA", False)] + ([("DoRA", True)] if args.dora else [])
    rows, results, all_met = [], {}, True
    for method, dora in variants:
        # the reference adapter weights: PEFT's init, with random B (else the merge would add zero)
        ref = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(target_modules="all-linear", r=args.rank,
                                                                         use_dora=dora))
        randomize_adapters(ref)
        weights = {k: v.clone() for k, v in adapter_state(ref).items()}
        del ref

        def fresh(lib, dora=dora, weights=weights):
            model = lib.get_peft_model(copy.deepcopy(base), lib.LoraConfig(target_modules="all-linear", r=args.rank,
                                                                            use_dora=dora))
            state = adapter_state(model)
            assert set(state) == set(weights), f"{lib.__name__}: adapter keys differ from the reference"
            with torch.no_grad():
                for k, v in weights.items():
                    state[k].copy_(v)
            return model

        # correctness first: surgery's merged model == PEFT's merged model
        s_merged = fresh(surgery).merge_and_unload()
        p_merged = fresh(peft).merge_and_unload()
        s_sd, p_sd = s_merged.state_dict(), p_merged.state_dict()
        assert set(s_sd) == set(p_sd), "merged models have different keys"
        w_diff = max((s_sd[k] - p_sd[k]).abs().max().item() for k in s_sd)
        with torch.inference_mode():
            l_diff = (s_merged(input_ids=x).logits - p_merged(input_ids=x).logits).abs().max().item()
            b_diff = (s_merged(input_ids=x).logits - base(input_ids=x).logits).abs().max().item()
        print(f"{method}: surgery merged vs PEFT merged: max |weight diff| {w_diff:.2e}, max |logits diff| "
              f"{l_diff:.2e} (vs unadapted base: {b_diff:.2e}); {len(weights)} adapter tensors", flush=True)
        del s_merged, p_merged, s_sd, p_sd

        cases = {"surgery": (lambda: fresh(surgery), lambda m: m.merge_and_unload()),
                 "PEFT": (lambda: fresh(peft), lambda m: m.merge_and_unload())}
        times = C.interleaved(cases, args.repeats, args.warmup)
        s, p = C.median(times["surgery"]), C.median(times["PEFT"])
        ratio = s / p
        if not dora:
            all_met &= ratio <= TARGET
        rows.append([method, C.fmt_ms(s), C.spread(times["surgery"]), C.fmt_ms(p), C.spread(times["PEFT"]),
                     f"{ratio:.3f}x", C.verdict(ratio, TARGET) if not dora else "(no target)",
                     f"{w_diff:.1e}", f"{l_diff:.1e}"])
        results[method] = {"surgery_s": s, "peft_s": p, "ratio": ratio, "max_weight_diff": w_diff,
                           "max_logits_diff": l_diff, "raw": times, "discarded_rounds": C.last_discarded}
    print()
    print(C.table(["method", "surgery ms", "min-max", "PEFT ms", "min-max", "surgery/PEFT", f"target <= {TARGET}x",
                   "max abs dW vs PEFT", "max abs dlogits vs PEFT"], rows))
    C.write_json(args.json, {"benchmark": "merge", "repeats": args.repeats, "results": results})
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
