"""A small transformers-Trainer run on a surgery model, shared by test_trainer.py in-process and as a subprocess.

    python -m tests.support.trainer_case OUT_DIR [--hide-peft]     (from the repository root)

--hide-peft makes `peft` unimportable before transformers loads (sys.modules["peft"] = None), so the Trainer
takes its no-peft paths; the run prints one JSON line with what it found.
"""
from __future__ import annotations

import json
import os
import sys

if __name__ == "__main__" and "--hide-peft" in sys.argv:
    sys.modules["peft"] = None  # importlib.util.find_spec("peft") now returns None: transformers sees no peft

import torch  # noqa: E402

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import surgery  # noqa: E402
from . import tiny_models as tm  # noqa: E402


class TinyClassification(torch.utils.data.Dataset):
    def __init__(self, n: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(2, 128, (n, 8), generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.y[i]}


def base_model():
    return tm.tiny_bert_seq_cls(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def lora_model():
    return surgery.get_peft_model(base_model(), surgery.LoraConfig(
        task_type="SEQ_CLS", target_modules=["query", "value"], r=4, lora_alpha=8))


def train(output_dir: str, max_steps: int = 4, resume=None, trainer_cls=None, model=None, **extra_args):
    """Train lora_model() (or `model`) with the Trainer; returns (trainer, model)."""
    from transformers import TrainingArguments

    from surgery.integrations.trainer import SurgeryTrainer

    model = lora_model() if model is None else model
    settings = dict(output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=2, save_strategy="steps",
                    save_steps=2, use_cpu=True, report_to=[], disable_tqdm=True, learning_rate=1e-2, seed=0,
                    logging_steps=100)
    args = TrainingArguments(**{**settings, **extra_args})
    trainer = (trainer_cls or SurgeryTrainer)(model=model, args=args, train_dataset=TinyClassification(),
                                              eval_dataset=TinyClassification(4, seed=1))
    trainer.train(resume_from_checkpoint=resume)
    return trainer, model


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in surgery.get_peft_model_state_dict(model).items()}


def main(out: str) -> dict:
    from transformers.utils import is_peft_available

    _, full = train(os.path.join(out, "full"))
    _, resumed = train(os.path.join(out, "resumed"), resume=os.path.join(out, "full", "checkpoint-2"))
    a, b = adapter_state(full), adapter_state(resumed)
    ckpt = os.path.join(out, "full", "checkpoint-2")
    return {"peft_available": is_peft_available(), "files": sorted(os.listdir(ckpt)),
            "resume_max_diff": max((a[k] - b[k]).abs().max().item() for k in a)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
