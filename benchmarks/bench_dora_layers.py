"""DoRA on nn.Conv2d and nn.Embedding, surgery vs PEFT in one process: the training step (forward + backward + AdamW).

    python benchmarks/bench_dora_layers.py [--quick] [--repeats N] [--threads N] [--json out.json]

Models (float32, seeded):
  conv       4 x Conv2d 3x3 (3 -> 64 -> 128 -> 128 -> 128, stride 2 after the first), batch 16 x 3 x 32 x 32,
             mean-pool, Linear head (10 classes), cross-entropy; every conv targeted, r=16
  embedding  nn.Embedding(32000, 512) -> mean over 128 tokens -> Linear(512, 10), batch 8 x 128, cross-entropy;
             the embedding targeted, r=16
Each DoRA row has a plain LoRA row beside it for scale. surgery's adapter is copied into PEFT's model by state
dict (the first loss is printed for both). Steps are timed interleaved and judged on the paired ratio (median over
rounds of surgery's time / PEFT's in the same round). DoRA's per-step cost is the row norm ||W + s B A||:
PEFT forms W + s B A (out x in x kernel, or embedding_dim x vocabulary) every step; surgery gets it from
||W||^2 (cached) and two r-wide products.
Target: every row <= 1.0x PEFT.
"""
from __future__ import annotations

import _common as C  # noqa: I001  (sets warning filters before torch/transformers import)

import copy

import peft
import torch
import torch.nn.functional as F
from torch import nn

import surgery


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        widths = [3, 64, 128, 128, 128]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2 if i == 1 else 1, padding=1)
                                   for i, (a, b) in enumerate(zip(widths, widths[1:])))
        self.head = nn.Linear(widths[-1], 10)

    def forward(self, x):
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.head(x.mean((2, 3)))


class EmbedNet(nn.Module):
    def __init__(self, vocab: int = 32000, dim: int = 512):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


CASES = {   # row: (model builder, input builder, LoraConfig kwargs)
    "LoRA Conv2d": (ConvNet, lambda g: torch.randn(16, 3, 32, 32, generator=g),
                    dict(target_modules=["convs.0", "convs.1", "convs.2", "convs.3"], r=16)),
    "DoRA Conv2d": (ConvNet, lambda g: torch.randn(16, 3, 32, 32, generator=g),
                    dict(target_modules=["convs.0", "convs.1", "convs.2", "convs.3"], r=16, use_dora=True)),
    "LoRA Embedding": (EmbedNet, lambda g: torch.randint(0, 32000, (8, 128), generator=g),
                       dict(target_modules=["emb"], r=16)),
    "DoRA Embedding": (EmbedNet, lambda g: torch.randint(0, 32000, (8, 128), generator=g),
                       dict(target_modules=["emb"], r=16, use_dora=True)),
}


def perturb(model, std: float = 0.02, seed: int = 1) -> None:
    """Seeded non-identity adapter values (B, embedding A, magnitudes), so DoRA's norm does real work."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)


def train_step(model, inputs, labels):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(_):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def main():
    args = C.parse_args(__doc__.splitlines()[0], default_repeats=10, quick_repeats=3, default_warmup=1)
    C.header("bench_dora_layers: DoRA on Conv2d and Embedding, training step", args)
    rows, results, all_met = [], {}, True
    for name, (build, make_inputs, kwargs) in CASES.items():
        torch.manual_seed(0)
        base = build()
        g = torch.Generator().manual_seed(2)
        inputs, labels = make_inputs(g), torch.randint(0, 10, (16 if "Conv" in name else 8,), generator=g)
        ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**kwargs))
        perturb(ours)
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
        peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours))
        ours.train(), theirs.train()
        with torch.no_grad():
            ls = F.cross_entropy(ours(inputs), labels).item()
            lp = F.cross_entropy(theirs(inputs), labels).item()
        print(f"{name}: {ours.get_nb_trainable_parameters()[0]:,} trainable params; first loss surgery {ls:.6f} "
              f"PEFT {lp:.6f} (|diff| {abs(ls - lp):.1e})", flush=True)
        steps = {"surgery": train_step(ours, inputs, labels), "PEFT": train_step(theirs, inputs, labels)}
        times = C.interleaved({k: (None, fn) for k, fn in steps.items()}, args.repeats, args.warmup,
                              disable_gc=False)
        ratio = C.paired_ratio(times, "surgery", "PEFT")
        met = ratio <= 1.0
        all_met &= met
        results[name] = {"step_ratio": ratio, "loss_diff": abs(ls - lp), "raw": times}
        rows.append([name, C.fmt_ms(C.median(times["surgery"])), C.spread(times["surgery"]),
                     C.fmt_ms(C.median(times["PEFT"])), C.spread(times["PEFT"]), f"{ratio:.3f}x",
                     C.verdict(ratio, 1.0), f"{abs(ls - lp):.1e}"])
    print()
    print(C.table(["case", "step surgery ms", "spread", "step PEFT ms", "spread", "surgery/PEFT (paired)",
                   "target met", "first-loss |diff|"], rows))
    C.write_json(args.json, {"benchmark": "dora_layers", "repeats": args.repeats, "results": results})
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
