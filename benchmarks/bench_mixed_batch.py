"""Mixed-batch serving (one adapter per sample) vs a single-adapter forward, surgery beside PEFT.

    python benchmarks/bench_mixed_batch.py [--quick] [--repeats N] [--threads 2] [--phase both|prefill|decode]
                                           [--adapters 32] [--batch 32] [--prompt 32]

The 45M Llama of _models.small_llama (hidden 512, 4 layers, vocab 32000, float32), 32 LoRA adapters with
ranks cycling 8/16/32/64 (alpha = 2r) on q_proj/k_proj/v_proj/o_proj, random factors identical in both
libraries. A batch of 32 samples, sample i naming adapter i (`adapter_names=[...]`), timed against a
single-adapter forward of the same batch (every sample on one adapter, `set_adapter`), in two phases:

  * prefill: a forward over 32 x 32 prompt tokens (use_cache=False);
  * decode:  one generation step, 32 x 1 tokens with the KV cache of a 32-token prefill (the serving case);
             each timed call gets a fresh copy of its prefill's cache (untimed).

The single-adapter baseline is a0 (r=8, the smallest rank: the strictest reference); a3 (r=64) is shown too.
Targets (issue 15): prefill mixed <= 1.05x single; decode mixed <= 1.25x single and <= 0.4x PEFT's mixed;
per-sample outputs equal single-adapter runs (max |logits diff| <= 1e-5). Exit 1 if one is missed.
"added time / PEFT's added time" is (mixed - single) / (PEFT mixed - PEFT single), per round: the cost of
mixing itself. (0.4x PEFT's mixed *time* cannot be met where the base forward dominates a decode step, as on
this 2-core VM, where the weights' memory traffic makes a single-adapter step ~40 ms: mixed >= single there, and
PEFT's mixed is ~1.7x its single, so the floor is ~0.55x.)
"""
from __future__ import annotations

import _common as C  # noqa: I001  (sets warning filters before torch/transformers import)

import copy

import peft
import torch

import surgery
from _models import copy_adapters, randomize_adapters, small_llama

RANKS = (8, 16, 32, 64)
TARGETS = {"prefill mixed / single": 1.05, "decode mixed / single": 1.25, "decode mixed / PEFT mixed": 0.4}
TOLERANCE = 1e-5


def build(lib, base, n_adapters):
    model = None
    for i in range(n_adapters):
        r = RANKS[i % len(RANKS)]
        config = lib.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                task_type="CAUSAL_LM")
        if model is None:
            model = lib.get_peft_model(copy.deepcopy(base), config, adapter_name="a0")
        else:
            model.add_adapter(f"a{i}", config)
    model.set_adapter("a0")
    return model.eval()


def forward(model, ids, names=None, cache=None, single=None):
    if single is not None:
        model.set_adapter(single)
    kwargs = {} if names is None else {"adapter_names": names}
    return model(input_ids=ids, past_key_values=cache, use_cache=cache is not None, **kwargs)


def check(models, prompt, step, names):
    """Max |logits diff| of surgery's mixed batch against each sample run alone on its adapter, and vs PEFT."""
    s, p = models["surgery"], models["PEFT"]
    diffs = {}
    with torch.inference_mode():
        pre = forward(s, prompt, names).logits
        dec = forward(s, step, names, cache=forward(s, prompt, names, cache=_empty_cache()).past_key_values).logits
        pre_alone, dec_alone = [], []
        for i, name in enumerate(names):
            pre_alone.append(forward(s, prompt[i:i + 1], single=name).logits)
            cache = forward(s, prompt[i:i + 1], cache=_empty_cache(), single=name).past_key_values
            dec_alone.append(forward(s, step[i:i + 1], cache=cache, single=name).logits)
        s.set_adapter("a0")
        diffs["prefill: mixed vs each sample alone"] = (pre - torch.cat(pre_alone)).abs().max().item()
        diffs["decode: mixed vs each sample alone"] = (dec - torch.cat(dec_alone)).abs().max().item()
        theirs = forward(p, step, names, cache=forward(p, prompt, names, cache=_empty_cache()).past_key_values)
        diffs["decode: surgery mixed vs PEFT mixed"] = (dec - theirs.logits).abs().max().item()
        theirs = forward(p, prompt, names).logits
        diffs["prefill: surgery mixed vs PEFT mixed"] = (pre - theirs).abs().max().item()
    return diffs


def _added_ratio(times) -> float:
    """Median over rounds of (mixed - single) / (PEFT mixed - PEFT single): what mixing adds to a forward,
    against what it adds in PEFT (the base forward, the same in both, cancels)."""
    rounds = zip(times["surgery mixed"], times["surgery single a0 (r=8)"], times["PEFT mixed"],
                 times["PEFT single a0 (r=8)"])
    return C.median([(sm - ss) / (pm - ps) for sm, ss, pm, ps in rounds])


def _empty_cache():
    from transformers import DynamicCache
    return DynamicCache()


def main():
    def extra(p):
        p.add_argument("--adapters", type=int, default=32)
        p.add_argument("--batch", type=int, default=32)
        p.add_argument("--prompt", type=int, default=32, help="prompt length (prefill T)")
        p.add_argument("--phase", choices=["prefill", "decode", "both"], default="both")
    args = C.parse_args(__doc__.splitlines()[0], default_repeats=15, quick_repeats=5, default_warmup=2, extra=extra)
    C.header("bench_mixed_batch: many adapters per batch, prefill and decode", args)
    base = small_llama().eval()
    models = {"surgery": build(surgery, base, args.adapters), "PEFT": build(peft, base, args.adapters)}
    randomize_adapters(models["PEFT"])
    copy_adapters(models["PEFT"], models["surgery"])
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 32000, (args.batch, args.prompt), generator=g)
    step = torch.randint(0, 32000, (args.batch, 1), generator=g)
    names = [f"a{i % args.adapters}" for i in range(args.batch)]
    top = f"a{len(RANKS) - 1}"   # the r=64 adapter

    diffs = check(models, prompt, step, names)
    for k, v in diffs.items():
        print(f"max |logits diff| {k}: {v:.2e}")
    print(flush=True)
    correct = all(v <= TOLERANCE for v in diffs.values())

    variants = {"single a0 (r=8)": ("a0", None), "single a3 (r=64)": (top, None), "mixed": ("a0", names)}
    results, rows = {}, []
    for phase in ("prefill", "decode") if args.phase == "both" else (args.phase,):
        cases, caches = {}, {}
        for lib, model in models.items():
            for tag, (single, batch_names) in variants.items():
                if lib == "PEFT" and tag.startswith("single a3"):
                    continue
                key = f"{lib} {tag}"
                if phase == "decode":
                    with torch.inference_mode():
                        caches[key] = forward(model, prompt, batch_names, cache=_empty_cache(),
                                              single=single).past_key_values

                def run(state, model=model, single=single, batch_names=batch_names, phase=phase):
                    with torch.inference_mode():
                        if phase == "prefill":
                            forward(model, prompt, batch_names, single=single)
                        else:
                            forward(model, step, batch_names, cache=state, single=single)
                setup = (lambda key=key: copy.deepcopy(caches[key])) if phase == "decode" else None
                cases[key] = (setup, run)
        repeats = args.repeats if phase == "prefill" else 3 * args.repeats   # decode steps are ~15x shorter
        times = C.interleaved(cases, repeats, args.warmup, disable_gc=True)
        med = {k: C.median(v) for k, v in times.items()}
        ratios = {
            f"{phase} mixed / single": C.paired_ratio(times, "surgery mixed", "surgery single a0 (r=8)"),
            f"{phase} mixed / single r=64": C.paired_ratio(times, "surgery mixed", "surgery single a3 (r=64)"),
            f"{phase} PEFT mixed / single": C.paired_ratio(times, "PEFT mixed", "PEFT single a0 (r=8)"),
            f"{phase} mixed / PEFT mixed": C.paired_ratio(times, "surgery mixed", "PEFT mixed"),
            f"{phase} single / PEFT single": C.paired_ratio(times, "surgery single a0 (r=8)", "PEFT single a0 (r=8)"),
            f"{phase} added time / PEFT's added time": _added_ratio(times),
        }
        for k in cases:
            rows.append([phase, k, C.fmt_ms(med[k]), C.spread(times[k])])
        results[phase] = {"median_s": med, "ratios": ratios, "discarded_rounds": C.last_discarded}
    print(C.table(["phase", "case", "median ms", "min-max ms"], rows))
    print()
    ratio_rows, all_met = [], correct
    for phase in results:
        for k, v in results[phase]["ratios"].items():
            target = TARGETS.get(k)
            met = target is None or v <= target
            all_met &= met
            ratio_rows.append([k, f"{v:.3f}x", C.verdict(v, target) if target else ""])
    print(C.table(["ratio (paired, surgery unless named)", "value", "target"], ratio_rows))
    print(f"\nper-sample outputs equal single-adapter runs (<= {TOLERANCE:g}): {'yes' if correct else 'NO'}")
    C.write_json(args.json, {"benchmark": "mixed_batch", "repeats": args.repeats, "correctness": diffs,
                             "results": results})
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
