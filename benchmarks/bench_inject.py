"""Adapter injection speed: get_peft_model (plan + apply) on meta-device models, surgery vs PEFT.

    python benchmarks/bench_inject.py [--quick]

Cases (a fresh meta-device model is built for every repeat, untimed):
  * Llama-2-7B (bundled config), LoRA on q_proj, v_proj, r=8          (64 layers wrapped)
  * Llama-3-70B shape, LoRA on all-linear, r=16                         (560 layers wrapped)
and surgery.plan alone (the dry run) on the same models. Target: surgery <= 0.2x PEFT.
"""
from __future__ import annotations

import _common as C  # noqa: I001  (sets warning filters before torch/transformers import)

import peft
import torch
import transformers

import surgery
from surgery.archs import load_model_for_planning

TARGET = 0.2

LLAMA_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                 num_key_value_heads=8, vocab_size=128256)


def build_7b():
    return load_model_for_planning("llama-2-7b")


def build_70b():
    with torch.device("meta"):
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_70B))


WORKLOADS = {
    "llama-2-7b  q,v r=8": (build_7b, dict(target_modules=["q_proj", "v_proj"], r=8)),
    "70B shape all-linear r=16": (build_70b, dict(target_modules="all-linear", r=16)),
}


def main():
    args = C.parse_args(__doc__.splitlines()[0], default_repeats=15, quick_repeats=5, default_warmup=2)
    C.header("bench_inject: get_peft_model on meta-device models", args)
    rows, results = [], {}
    all_met = True
    for label, (build, kw) in WORKLOADS.items():
        cases = {
            "surgery": (build, lambda m, kw=kw: surgery.get_peft_model(m, surgery.LoraConfig(**kw))),
            "peft": (build, lambda m, kw=kw: peft.get_peft_model(m, peft.LoraConfig(**kw))),
            "peft low_cpu_mem": (build, lambda m, kw=kw: peft.get_peft_model(m, peft.LoraConfig(**kw),
                                                                             low_cpu_mem_usage=True)),
            "surgery.plan": (build, lambda m, kw=kw: surgery.plan(m, surgery.LoraConfig(**kw))),
        }
        # sanity: both wrap the same layers
        s_model = surgery.get_peft_model(build(), surgery.LoraConfig(**kw))
        p_model = peft.get_peft_model(build(), peft.LoraConfig(**kw))
        s_keys = sorted(k for k, _ in s_model.named_parameters() if "lora_" in k)
        p_keys = sorted(k for k, _ in p_model.named_parameters() if "lora_" in k)
        assert s_keys == p_keys, f"{label}: surgery and PEFT created different adapter parameters"
        assert s_model.get_nb_trainable_parameters() == p_model.get_nb_trainable_parameters()
        n_wrapped = len(s_model.plan().rewrites)
        del s_model, p_model

        times = C.interleaved(cases, args.repeats, args.warmup)
        s, p, plm, pl = (C.median(times[k]) for k in ("surgery", "peft", "peft low_cpu_mem", "surgery.plan"))
        ratio = s / p
        all_met &= ratio <= TARGET
        rows.append([label, n_wrapped, C.fmt_ms(pl), C.fmt_ms(s), C.fmt_ms(p), f"{ratio:.3f}x",
                     C.verdict(ratio, TARGET), C.fmt_ms(plm), f"{s / plm:.3f}x"])
        results[label] = {"wrapped": n_wrapped, "surgery_plan_s": pl, "surgery_s": s, "peft_s": p,
                          "peft_low_cpu_mem_usage_s": plm, "ratio": ratio, "ratio_vs_low_cpu_mem": s / plm,
                          "discarded_rounds": C.last_discarded,
                          "raw": times}
        print("  " + label + ": min-max ms: " + ", ".join(f"{k} {C.spread(v)}" for k, v in times.items()),
              flush=True)
    print()
    print(C.table(["model / config", "layers", "surgery.plan ms", "surgery get_peft_model ms",
                   "PEFT get_peft_model ms", "surgery/PEFT", f"target <= {TARGET}x",
                   "PEFT low_cpu_mem_usage=True ms", "surgery/that"], rows))
    print("\nThe target compares with PEFT's default get_peft_model. PEFT by default builds each LoRA factor"
          "\non the CPU (allocated + kaiming-initialised) and only then moves it to the base layer's meta device;"
          "\nwith low_cpu_mem_usage=True it builds them on meta directly, as surgery always does on meta models.")
    C.write_json(args.json, {"benchmark": "inject", "repeats": args.repeats, "results": results})
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
