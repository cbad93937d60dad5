"""Small TRL runs (SFT, DPO, GRPO, reward) on a tiny Llama, with the adapter from peft or from surgery.

    run = sft_run("surgery", out_dir)       # or "peft": trl's own trainer with peft's LoraConfig
    run.losses, run.adapter, run.trainer
    python -m tests.support.trl_runs OUT_DIR [--hide-peft]   surgery's runs, peft unimportable: one JSON line

Both libraries get the same base weights, the same seed before the trainer is built (LoRA's A is drawn then)
and the same TRL config, so their runs must agree step by step.
"""
from __future__ import annotations

import dataclasses
import os
import sys

if __name__ == "__main__" and "--hide-peft" in sys.argv:
    sys.modules["peft"] = None  # before transformers and TRL load: they see no peft

import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_TELEMETRY", "0")

from . import tiny_models  # noqa: E402
from .tiny_tokenizer import tiny_tokenizer  # noqa: E402

TARGETS = ["q_proj", "v_proj"]
WORDS = ["the cat sat.", "a dog ran!", "we like tea.", "it is late.", "go home now.", "red and blue.",
         "one two three.", "sun is hot."]


@dataclasses.dataclass
class Run:
    trainer: object
    losses: list
    adapter: dict
    logs: list


def library(name: str):
    if name == "peft":
        import peft
        import trl

        return peft, trl
    import surgery
    import surgery.integrations.trl as surgery_trl

    return surgery, surgery_trl


def lora_config(lib_name: str, **overrides):
    lib, _ = library(lib_name)
    values = dict(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM")
    values.update(overrides)
    return lib.LoraConfig(**values)


def base_model(seed: int = 0):
    return tiny_models.tiny_llama(seed=seed, pad_token_id=0, eos_token_id=1, bos_token_id=2).train()


def _common(out_dir: str, **extra) -> dict:
    return dict(output_dir=out_dir, max_steps=4, per_device_train_batch_size=2, learning_rate=5e-3,
                logging_steps=1, save_steps=2, save_strategy="steps", report_to=[], use_cpu=True, seed=0,
                disable_tqdm=True, **extra)


def adapter_of(model, lib_name: str) -> dict:
    lib, _ = library(lib_name)
    return {k: v.detach().clone().float() for k, v in lib.get_peft_model_state_dict(model).items()}


def _finish(trainer, lib_name: str) -> Run:
    trainer.train()
    logs = trainer.state.log_history
    losses = [entry["loss"] for entry in logs if "loss" in entry]
    return Run(trainer, losses, adapter_of(trainer.model, lib_name), logs)


def sft_run(lib_name: str, out_dir: str, model=None, **config) -> Run:
    """`model`: a base to put the adapter on (default: base_model())."""
    import datasets
    from trl import SFTConfig

    _, trainers = library(lib_name)
    data = datasets.Dataset.from_dict({"text": WORDS})
    args = SFTConfig(**_common(out_dir, max_length=24, **config))
    model, tokenizer = base_model() if model is None else model, tiny_tokenizer()
    torch.manual_seed(0)
    trainer = trainers.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                                  peft_config=lora_config(lib_name))
    return _finish(trainer, lib_name)


def preference_data():
    import datasets

    prompts = [w.split(" ")[0] + " " for w in WORDS]
    chosen = [w[len(p):] for w, p in zip(WORDS, prompts)]
    rejected = [c[::-1] for c in chosen]
    return datasets.Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})


def dpo_run(lib_name: str, out_dir: str, model=None, **config) -> Run:
    from trl import DPOConfig

    _, trainers = library(lib_name)
    args = DPOConfig(**_common(out_dir, max_length=24, **config))
    torch.manual_seed(0)
    peft_config = lora_config(lib_name) if model is None else None
    trainer = trainers.DPOTrainer(model=base_model() if model is None else model, args=args,
                                  train_dataset=preference_data(), processing_class=tiny_tokenizer(),
                                  peft_config=peft_config)
    return _finish(trainer, lib_name)


def length_reward(completions, **kwargs):
    """Rewards completions near 6 characters: a signal the policy can follow in a few steps."""
    return [-abs(len(c) - 6) / 6.0 for c in completions]


def grpo_run(lib_name: str, out_dir: str, **config) -> Run:
    import datasets
    from trl import GRPOConfig

    _, trainers = library(lib_name)
    data = datasets.Dataset.from_dict({"prompt": [w[:4] for w in WORDS]})
    args = GRPOConfig(**_common(out_dir, num_generations=2, max_completion_length=8, generation_batch_size=4,
                                **config))
    torch.manual_seed(0)
    trainer = trainers.GRPOTrainer(model=base_model(), reward_funcs=length_reward, args=args, train_dataset=data,
                                   processing_class=tiny_tokenizer(), peft_config=lora_config(lib_name))
    return _finish(trainer, lib_name)


def reward_data():
    import datasets

    data = preference_data()
    return datasets.Dataset.from_dict({"chosen": [p + c for p, c in zip(data["prompt"], data["chosen"])],
                                       "rejected": [p + c for p, c in zip(data["prompt"], data["rejected"])]})


def reward_run(lib_name: str, out_dir: str, **config) -> Run:
    from transformers import LlamaForSequenceClassification
    from trl import RewardConfig

    _, trainers = library(lib_name)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(tiny_models.llama_config(pad_token_id=0, eos_token_id=1, num_labels=1))
    args = RewardConfig(**_common(out_dir, max_length=24, **config))
    torch.manual_seed(0)
    trainer = trainers.RewardTrainer(model=model, args=args, train_dataset=reward_data(),
                                     processing_class=tiny_tokenizer(),
                                     peft_config=lora_config(lib_name, task_type="SEQ_CLS"))
    return _finish(trainer, lib_name)


def main(out: str) -> dict:
    """Surgery's SFT, DPO and GRPO runs (what --hide-peft checks without peft); one JSON line of facts."""
    from transformers.utils import is_peft_available

    sft, dpo = sft_run("surgery", os.path.join(out, "sft")), dpo_run("surgery", os.path.join(out, "dpo"))
    grpo = grpo_run("surgery", os.path.join(out, "grpo"), beta=0.1)
    return {"peft_available": is_peft_available(), "sft": sft.losses, "dpo": dpo.losses, "grpo": grpo.losses,
            "dpo_ref_model": dpo.trainer.ref_model is not None, "grpo_kl": [e["kl"] for e in grpo.logs if "kl" in e],
            "files": sorted(os.listdir(os.path.join(out, "dpo", "checkpoint-2")))}


if __name__ == "__main__":
    import json

    print(json.dumps(main(sys.argv[1])))
