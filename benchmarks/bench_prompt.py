"""Prompt learning speed: forward and generate, surgery vs PEFT, for prompt tuning, P-tuning and prefix tuning.

    python benchmarks/bench_prompt.py [--quick]

Models (random weights, float32): the small Llama of the other benchmarks (hidden 512, 4 layers, vocab 32000)
as CAUSAL_LM, and a small BERT (hidden 256, 4 layers) as SEQ_CLS. 20 virtual tokens, identical prompt-encoder
weights in both libraries (copied from PEFT), checked before timing. Workloads, under torch.inference_mode():
  * forward:  batch 2 x 128 tokens (Llama), batch 8 x 128 (BERT);
  * generate: batch 2 x 16 prompt tokens, 8 new tokens, greedy, KV cache on and off (Llama).
PEFT cannot run prefix tuning on BERT with transformers 5, so that row has surgery alone.
PEFT 0.21's generate is wrong under transformers 5 with the KV cache on (it drops the prefix, or prepends the
prompt again at every step) and for Llama prefix tuning with it off (a stale cache): there its tokens differ
and its work is not the same, so those ratios compare speed only; the last column says where outputs agree.
Target: surgery forward <= 1.10x PEFT (the same computation; the hand-off should cost nothing).
"""
from __future__ import annotations

import _common as C  # noqa: I001  (sets warning filters before torch/transformers import)

import copy

import peft
import torch
import transformers

import surgery
from _models import small_llama

FORWARD_TARGET = 1.10
METHODS = {
    "prompt tuning": ("PromptTuningConfig", {}),
    "P-tuning (MLP)": ("PromptEncoderConfig", {"encoder_hidden_size": 128}),
    "prefix tuning": ("PrefixTuningConfig", {}),
}


def small_bert(seed: int = 0):
    cfg = transformers.BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                  intermediate_size=1024, vocab_size=30000, num_labels=2)
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(cfg).eval()


def build(base, method: str, task: str):
    cls_name, extra = METHODS[method]
    fields = dict(task_type=task, num_virtual_tokens=20, **extra)
    theirs = peft.get_peft_model(copy.deepcopy(base), getattr(peft, cls_name)(**fields)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in theirs.prompt_encoder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    ours = surgery.get_peft_model(copy.deepcopy(base), getattr(surgery, cls_name)(**fields)).eval()
    ours.prompt_encoder.load_state_dict(theirs.prompt_encoder.state_dict())
    if task == "SEQ_CLS":
        ours.get_base_model().classifier.modules_to_save.default.load_state_dict(
            theirs.base_model.classifier.modules_to_save.default.state_dict())
    return ours, theirs


def run_case(rows, results, args, label, ours, theirs, call, peft_runs=True, check=None):
    cases = {"surgery": (None, lambda _: call(ours))}
    if peft_runs:
        cases["PEFT"] = (None, lambda _: call(theirs))
    with torch.inference_mode():
        same = check(ours, theirs) if (check and peft_runs) else "-"
        times = C.interleaved(cases, repeats=args.repeats, warmup=args.warmup, disable_gc=False,
                              wait_budget_s=20.0 if args.quick else 120.0)
    s = C.median(times["surgery"])
    p = C.median(times["PEFT"]) if peft_runs else None
    ratio = s / p if p else None
    rows.append([label, C.fmt_ms(s), C.fmt_ms(p) if p else "-", f"{ratio:.3f}x" if ratio else "-", same])
    results[label] = {"surgery_s": s, "peft_s": p, "ratio": ratio, "same": same}
    return ratio


def main():
    args = C.parse_args(__doc__.splitlines()[0], default_repeats=10, quick_repeats=3, default_warmup=1)
    C.header("bench_prompt: prompt learning forward and generate", args)
    llama, bert = small_llama().eval(), small_bert()
    x_llama = torch.randint(0, 32000, (2, 128), generator=torch.Generator().manual_seed(2))
    x_bert = torch.randint(0, 30000, (8, 128), generator=torch.Generator().manual_seed(3))
    prompt = torch.randint(0, 32000, (2, 16), generator=torch.Generator().manual_seed(4))
    gen = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=8, min_new_tokens=8, do_sample=False,
               pad_token_id=0)
    rows, results, missed = [], {}, []

    def logits_equal(ours, theirs, x):
        return f"{(ours(input_ids=x).logits - theirs(input_ids=x).logits).abs().max().item():.1e}"

    for method in METHODS:
        ours, theirs = build(llama, method, "CAUSAL_LM")
        ratio = run_case(rows, results, args, f"Llama forward 2x128, {method}", ours, theirs,
                         lambda m: m(input_ids=x_llama), check=lambda a, b: logits_equal(a, b, x_llama))
        if ratio and ratio > FORWARD_TARGET:
            missed.append(f"Llama forward, {method}: {ratio:.3f}x")
        for cache in (True, False):
            def call(m, cache=cache):
                return m.generate(input_ids=prompt, use_cache=cache, **gen)

            def same(a, b, call=call):
                return "yes" if torch.equal(call(a), call(b)) else "no (PEFT bug)"

            run_case(rows, results, args, f"Llama generate 2x16+8 cache {'on' if cache else 'off'}, {method}",
                     ours, theirs, call, check=same)
        del ours, theirs
    for method in METHODS:
        ours, theirs = build(bert, method, "SEQ_CLS")
        runs = method != "prefix tuning"
        ratio = run_case(rows, results, args, f"BERT forward 8x128, {method}", ours, theirs,
                         lambda m: m(input_ids=x_bert), peft_runs=runs,
                         check=lambda a, b: logits_equal(a, b, x_bert))
        if ratio and ratio > FORWARD_TARGET:
            missed.append(f"BERT forward, {method}: {ratio:.3f}x")
    print(C.table(["case", "surgery ms", "PEFT ms", "surgery / PEFT", "max |diff| / same tokens"], rows))
    print()
    print(f"forward target (<= {FORWARD_TARGET}x PEFT): " + ("met" if not missed else "MISSED: " + "; ".join(missed)))
    C.write_json(args.json, {"results": results, "forward_target": FORWARD_TARGET, "missed": missed})
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
