"""Training-step speed: forward + backward + AdamW step, LoRA and DoRA, surgery vs PEFT vs a lower bound.

    python benchmarks/bench_train_step.py [--quick] [--dropout P] [--dora-recompute] [--dtype bfloat16]

Model: a real-weight Llama (hidden 512, intermediate 1376, 4 layers, 8 heads, vocab 32000, float32),
batch 4 x 128 tokens, causal-LM loss; adapters r=16 on all-linear (lm_head excluded, as in PEFT).

The lower bound is the same model with every parameter frozen and the input embeddings' output made to
require grad: forward + backward through the activations only (no weight gradients, no optimizer).
Any adapter step must do at least this work; the ratio time/bound is the adapter's overhead.
Targets: LoRA <= 1.05x bound, DoRA <= 1.12x bound, judged on the paired ratio (the median over rounds
of case time / bound time measured in the same round), which cancels slow stretches of a shared machine.
--dropout P gives both libraries lora_dropout=P (surgery's nodes then draw the mask and keep it as bits);
--dora-recompute runs surgery's DoRA with fused_dora.KEEP_OUTPUT = False (y recomputed in backward: less
memory, one more GEMM). The targets are judged for float32 without either.
"""
from __future__ import annotations

import _common as C  # noqa: I001  (sets warning filters before torch/transformers import)

import copy

import peft
import torch

import surgery
from _models import adamw_step, copy_adapters, n_params, small_llama

TARGETS = {"LoRA": 1.05, "DoRA": 1.12}


def make_bound(base):
    model = copy.deepcopy(base)
    model.requires_grad_(False)
    model.get_input_embeddings().register_forward_hook(lambda mod, inp, out: out.requires_grad_(True))
    model.train()

    def step(batch):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        return loss.detach()
    return model, step


def make_adapter(lib, base, use_dora: bool, r: int, dropout: float = 0.0):
    model = lib.get_peft_model(copy.deepcopy(base), lib.LoraConfig(target_modules="all-linear", r=r,
                                                                    use_dora=use_dora, lora_dropout=dropout))
    model.train()
    return model, adamw_step(model)


def main():
    def extra(p):
        p.add_argument("--batch", type=int, default=4)
        p.add_argument("--seq", type=int, default=128)
        p.add_argument("--rank", type=int, default=16)
        p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                       help="base model dtype; with bfloat16 both libraries keep float32 adapters "
                            "(autocast_adapter_dtype, their default); the targets are for float32")
        p.add_argument("--dropout", type=float, default=0.0, help="lora_dropout for both libraries")
        p.add_argument("--dora-recompute", action="store_true",
                       help="surgery's DoRA recomputes y in backward (fused_dora.KEEP_OUTPUT = False)")
    args = C.parse_args(__doc__.splitlines()[0], default_repeats=15, quick_repeats=4, default_warmup=2,
                        extra=extra)
    C.header("bench_train_step: forward + backward + AdamW step", args)
    if args.dora_recompute:
        import surgery.methods.lora.fused_dora as fused_dora
        fused_dora.KEEP_OUTPUT = False
    base = small_llama().to(getattr(torch, args.dtype))
    torch.manual_seed(123)
    batch = torch.randint(0, base.config.vocab_size, (args.batch, args.seq))
    print(f"model: Llama {n_params(base) / 1e6:.1f}M params ({args.dtype}), hidden 512, inter 1376, 4 layers; "
          f"batch {args.batch}x{args.seq}; all-linear r={args.rank}; lora_dropout {args.dropout}"
          + ("; surgery DoRA recomputes y" if args.dora_recompute else ""))

    bound_model, bound_step = make_bound(base)
    steps = {"bound": bound_step}
    models = {}
    for method, dora in (("LoRA", False), ("DoRA", True)):
        p_model, p_step = make_adapter(peft, base, dora, args.rank, args.dropout)
        s_model, s_step = make_adapter(surgery, base, dora, args.rank, args.dropout)
        n = copy_adapters(p_model, s_model)        # identical adapter weights in both
        assert p_model.get_nb_trainable_parameters() == s_model.get_nb_trainable_parameters()
        models[method] = (s_model, p_model)
        steps[f"surgery {method}"] = s_step
        steps[f"PEFT {method}"] = p_step
        trainable = s_model.get_nb_trainable_parameters()[0]
        print(f"{method}: {n} adapter tensors, {trainable:,} trainable params (same in both)")

    # correctness: the first step gives the same loss in both libraries (same weights, same batch)
    with torch.no_grad():
        for method, (s_model, p_model) in models.items():
            torch.manual_seed(0)   # the same dropout masks in both
            ls = s_model(input_ids=batch, labels=batch).loss.item()
            torch.manual_seed(0)
            lp = p_model(input_ids=batch, labels=batch).loss.item()
            print(f"{method} loss before training: surgery {ls:.6f}  PEFT {lp:.6f}  |diff| {abs(ls - lp):.2e}")
    print(flush=True)

    cases = {name: (lambda: batch, fn) for name, fn in steps.items()}
    times = C.interleaved(cases, args.repeats, args.warmup, disable_gc=False)
    med = {k: C.median(v) for k, v in times.items()}
    bound = med["bound"]
    mins = {k: min(v) for k, v in times.items()}
    rows = [["bound (frozen, activations only)", C.fmt_ms(bound), C.spread(times["bound"]), "1.000x", "1.000x",
             "1.000x", "", ""]]
    results, all_met = {}, True
    for method, target in TARGETS.items():
        for lib in ("surgery", "PEFT"):
            k = f"{lib} {method}"
            rel = med[k] / bound
            paired = C.paired_ratio(times, k, "bound")
            # the targets are float32 figures, without dropout or the recompute switch
            judged = lib == "surgery" and args.dtype == "float32" and not args.dropout and not args.dora_recompute
            met = C.verdict(paired, target) if judged else "(reference)" if lib == "PEFT" else "(float32 target)"
            if judged:
                all_met &= paired <= target
            vs = C.paired_ratio(times, k, f"PEFT {method}") if lib == "surgery" else None
            rows.append([k, C.fmt_ms(med[k]), C.spread(times[k]), f"{rel:.3f}x", f"{paired:.3f}x",
                         f"{mins[k] / mins['bound']:.3f}x", f"{vs:.3f}x" if vs is not None else "", met])
            results[k] = {"median_s": med[k], "over_bound": rel, "over_bound_paired": paired,
                          "over_bound_min": mins[k] / mins["bound"], "vs_peft_paired": vs}
    print(C.table(["case", "median ms", "min-max ms", "median / median bound", "/ bound (paired)", "min / min bound",
                   "surgery/PEFT (paired)", "target (on paired)"], rows))
    print("\n'paired': the median over rounds of (this case's time / the bound's time in the same round);"
          "\n'min / min bound': best-case ratio (noise on a shared machine only ever adds time).")
    C.write_json(args.json, {"benchmark": "train_step", "repeats": args.repeats, "bound_s": bound,
                             "results": results, "raw": times,
                             "discarded_rounds": C.last_discarded})
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
