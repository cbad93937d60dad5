"""DPO with TRL: surgery (surgery.integrations.trl) vs TRL + PEFT in one process, step time and peak memory.

    python benchmarks/bench_dpo.py [--quick] [--repeats N] [--threads N] [--no-checkpointing] [--json out.json]

Model: the 45M Llama of the other benchmarks (hidden 512, 4 layers, vocab 32000), LoRA r=16 on every linear
layer, dropout 0; batch 4 preference pairs of 128 tokens (prompt 32 + completion 96); TRL's DPOConfig defaults
(sigmoid loss, beta 0.1, gradient checkpointing on, dropout disabled). Both trainers hold the same adapter
(surgery's random factors copied into PEFT's, so policy and reference differ and the loss is not log 2); the
reference is the base with the adapter disabled in both. One step = TRL's training_step (policy forward,
reference forward under no_grad, backward) + AdamW. Rows:
  step      wall time, interleaved, paired ratio surgery / PEFT. Target <= 1.0x.
  peak      the CPU allocator's peak during one step (torch.profiler memory timeline). Target <= 1.0x.
The first step's losses of both are printed (they must agree).
"""
from __future__ import annotations

import _common as C  # noqa: I001  (sets warning filters before torch/transformers import)

import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))   # tests.support's tokenizer

os.environ.setdefault("TRL_TELEMETRY", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import peft  # noqa: E402
import trl  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import surgery  # noqa: E402
import surgery.integrations.trl as surgery_trl  # noqa: E402
from _models import copy_adapters, randomize_adapters, small_llama  # noqa: E402
from tests.support.tiny_tokenizer import tiny_tokenizer  # noqa: E402

LORA = dict(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
LETTERS = "abcdefghijklmnopqrstuvwxyz "


def _data(n: int = 8) -> datasets.Dataset:
    g = torch.Generator().manual_seed(0)

    def text(length):
        return "".join(LETTERS[i] for i in torch.randint(0, len(LETTERS), (length,), generator=g).tolist())

    return datasets.Dataset.from_dict({"prompt": [text(32) for _ in range(n)], "chosen": [text(95) for _ in range(n)],
                                       "rejected": [text(95) for _ in range(n)]})


def _trainer(lib: str, model, checkpointing: bool):
    args = trl.DPOConfig(output_dir=tempfile.mkdtemp(prefix="bench-dpo-"), per_device_train_batch_size=4,
                         max_length=128, report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no",
                         gradient_checkpointing=checkpointing, learning_rate=1e-4, seed=0)
    cls = surgery_trl.DPOTrainer if lib == "surgery" else trl.DPOTrainer
    trainer = cls(model=model, args=args, train_dataset=_data(), processing_class=tiny_tokenizer())
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1   # set by Trainer.train's loop, which the benchmark bypasses
    if checkpointing:   # what Trainer.train does before its loop
        trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer, batch


def _pair(checkpointing: bool):
    """(surgery trainer, PEFT trainer) over equal bases with the same adapter tensors, and one batch."""
    ours = surgery.get_peft_model(small_llama(), surgery.LoraConfig(**LORA))
    randomize_adapters(ours)
    theirs = peft.get_peft_model(small_llama(), peft.LoraConfig(**LORA))
    copy_adapters(ours, theirs)
    # a PeftModel passed in gets TRL's frozen "ref" copy of its adapter; a fresh adapter (peft_config=) does not:
    # benchmark that case, the common one, by dropping the copy in both after construction
    pairs = {}
    for lib, model in (("surgery", ours), ("PEFT", theirs)):
        trainer, batch = _trainer(lib, model, checkpointing)
        if "ref" in trainer.model.peft_config:
            trainer.model.delete_adapter("ref")
        pairs[lib] = (trainer, batch)
    return pairs


def step(trainer, batch) -> float:
    loss = trainer.training_step(trainer.model, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(loss)


def peak_bytes(trainer, batch) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step(trainer, batch)
    from torch.profiler._memory_profiler import MemoryProfileTimeline   # private, but exact: alloc / free events
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return max(sum(row) for row in sizes)


def main():
    def extra(parser):
        parser.add_argument("--no-checkpointing", action="store_true", help="gradient_checkpointing=False")
    args = C.parse_args(__doc__.splitlines()[0], default_repeats=8, quick_repeats=3, default_warmup=1, extra=extra)
    C.header(f"bench_dpo: TRL {trl.__version__} DPOTrainer, LoRA r=16 all-linear on the 45M Llama", args)
    pairs = _pair(not args.no_checkpointing)
    first = {lib: step(*pair) for lib, pair in pairs.items()}
    print(f"first step loss: surgery {first['surgery']:.6f} PEFT {first['PEFT']:.6f} "
          f"(|diff| {abs(first['surgery'] - first['PEFT']):.1e})", flush=True)
    cases = {lib: ((lambda p=pair: p), (lambda p: step(*p))) for lib, pair in pairs.items()}
    times = C.interleaved(cases, args.repeats, args.warmup)
    ratio = C.paired_ratio(times, "surgery", "PEFT")
    peaks = {lib: min(peak_bytes(*pair) for _ in range(2)) for lib, pair in pairs.items()}
    peak_ratio = peaks["surgery"] / peaks["PEFT"]
    mib = 2 ** 20
    rows = [["step (ms)", C.fmt_ms(C.median(times["surgery"])), C.fmt_ms(C.median(times["PEFT"])),
             f"{ratio:.3f}x", "<= 1.0x", C.verdict(ratio, 1.0)],
            ["peak (MiB)", f"{peaks['surgery'] / mib:.1f}", f"{peaks['PEFT'] / mib:.1f}", f"{peak_ratio:.3f}x",
             "<= 1.0x", C.verdict(peak_ratio, 1.0)]]
    print()
    print(C.table(["case", "surgery", "TRL + PEFT", "ratio", "target", "met"], rows))
    C.write_json(args.json, {"benchmark": "dpo", "repeats": args.repeats, "checkpointing": not args.no_checkpointing,
                             "results": {"step": {"ratio": ratio, "raw": times},
                                         "peak": {"surgery_bytes": peaks["surgery"], "peft_bytes": peaks["PEFT"],
                                                  "ratio": peak_ratio}}})
    return 0 if ratio <= 1.0 and peak_ratio <= 1.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
