"""TRL's trainers with surgery (surgery.integrations.trl) against TRL with peft, from the same seed.

Tolerances: per-step losses and final adapter tensors within 1e-4 (the issue's bound; the runs are seeded alike
and do the same float32 work, so they agree to the bit here), logits of a checkpoint loaded in peft within 1e-5.
"""
from __future__ import annotations

import math
import os

import peft
import pytest
import torch

import surgery
from surgery.errors import UnsupportedTrainerError
from tests.support import facts_with_peft_hidden
from tests.support import trl_runs as runs
from tests.support.tiny_models import token_batch

ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}
FULL_MODEL_FILES = {"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"}


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """{trainer kind: (peft run, surgery run)} for SFT, DPO and the reward trainer (a few seconds each)."""
    root = tmp_path_factory.mktemp("trl")
    out = {}
    for kind in ("sft", "dpo", "reward"):
        run = getattr(runs, f"{kind}_run")
        out[kind] = (run("peft", str(root / f"{kind}-peft")), run("surgery", str(root / f"{kind}-surgery")))
    return out


def _assert_same_run(theirs, ours):
    assert len(ours.losses) == len(theirs.losses) == 4
    for step, (a, b) in enumerate(zip(theirs.losses, ours.losses), 1):
        assert abs(a - b) <= 1e-4, f"step {step}: peft {a} vs surgery {b}"
    assert sorted(ours.adapter) == sorted(theirs.adapter)
    for key in theirs.adapter:
        torch.testing.assert_close(ours.adapter[key], theirs.adapter[key], rtol=0, atol=1e-4, msg=key)


@pytest.mark.parametrize("kind", ["sft", "dpo", "reward"])
def test_runs_equal_trl_with_peft_step_by_step(paired, kind):
    theirs, ours = paired[kind]
    _assert_same_run(theirs, ours)
    assert isinstance(ours.trainer.model, surgery.PeftModel)
    # training moved the adapter (a run that never trained would also "match")
    assert any(v.abs().max() > 0 for k, v in ours.adapter.items() if "lora_B" in k)


def test_dpo_reference_is_the_base_with_the_adapter_disabled(paired):
    theirs, ours = paired["dpo"]
    assert ours.trainer.ref_model is None   # no second copy of the weights
    margins = [e["rewards/margins"] for e in ours.logs if "rewards/margins" in e]
    assert margins[0] == 0 and any(m != 0 for m in margins[1:])   # policy == reference only before the 1st step
    assert margins == [e["rewards/margins"] for e in theirs.logs if "rewards/margins" in e]


def _logits_of_checkpoint(library, trainer, step: int = 4) -> torch.Tensor:
    """Logits of the checkpoint loaded by `library` on a fresh base (TRL leaves the trained model's base in a
    state that differs from a fresh one by ~2e-3, under peft too, so fresh bases are compared)."""
    path = os.path.join(trainer.args.output_dir, f"checkpoint-{step}")
    with torch.no_grad():
        return library.PeftModel.from_pretrained(runs.base_model(), path).eval()(input_ids=token_batch(vocab=48)).logits


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_checkpoints_hold_the_adapter_and_load_in_peft_with_equal_logits(paired, kind):
    theirs, ours = paired[kind]
    for step in (2, 4):
        files = set(os.listdir(os.path.join(ours.trainer.args.output_dir, f"checkpoint-{step}")))
        assert ADAPTER_FILES <= files and not files & FULL_MODEL_FILES
    in_peft = _logits_of_checkpoint(peft, ours.trainer)
    torch.testing.assert_close(in_peft, _logits_of_checkpoint(peft, theirs.trainer), rtol=0, atol=1e-5)
    torch.testing.assert_close(in_peft, _logits_of_checkpoint(surgery, ours.trainer), rtol=0, atol=1e-5)
    with torch.no_grad():   # the adapter matters: the fresh base alone gives other logits
        assert (in_peft - runs.base_model().eval()(input_ids=token_batch(vocab=48)).logits).abs().max() > 1e-4


def test_save_model_writes_the_adapter_only(paired, tmp_path):
    _, ours = paired["sft"]
    ours.trainer.save_model(str(tmp_path / "final"))
    files = set(os.listdir(tmp_path / "final"))
    assert ADAPTER_FILES <= files and not files & FULL_MODEL_FILES
    saved = surgery.PeftModel.from_pretrained(runs.base_model(), str(tmp_path / "final"))
    for key, value in runs.adapter_of(saved, "surgery").items():
        torch.testing.assert_close(value, ours.adapter[key], rtol=0, atol=0)


def test_resume_from_a_checkpoint_reaches_the_same_adapter(paired, tmp_path):
    _, full = paired["sft"]
    checkpoint = os.path.join(full.trainer.args.output_dir, "checkpoint-2")
    import datasets
    from trl import SFTConfig

    from surgery.integrations.trl import SFTTrainer

    torch.manual_seed(0)
    trainer = SFTTrainer(model=runs.base_model(), args=SFTConfig(**runs._common(str(tmp_path), max_length=24)),
                         train_dataset=datasets.Dataset.from_dict({"text": runs.WORDS}),
                         processing_class=runs.tiny_tokenizer(), peft_config=runs.lora_config("surgery"))
    trainer.train(resume_from_checkpoint=checkpoint)
    resumed = runs.adapter_of(trainer.model, "surgery")
    for key in full.adapter:
        torch.testing.assert_close(resumed[key], full.adapter[key], rtol=0, atol=1e-6, msg=key)


def test_sft_uses_gradient_checkpointing_with_input_grads(paired):
    _, ours = paired["sft"]
    base = ours.trainer.model.get_base_model()
    assert ours.trainer.args.gradient_checkpointing and base.is_activation_checkpointing
    assert getattr(base, "_require_grads_hook", None) or getattr(base, "_require_grads_hooks", None)


def test_a_surgery_peft_model_as_the_model_trains_as_a_peft_one(tmp_path):
    """DPO given a PeftModel (a pretrained adapter): TRL copies it into a frozen 'ref' adapter for the reference."""
    torch.manual_seed(0)
    theirs = runs.dpo_run("peft", str(tmp_path / "p"), model=peft.get_peft_model(
        runs.base_model(), runs.lora_config("peft", init_lora_weights="gaussian")))
    torch.manual_seed(0)
    ours = runs.dpo_run("surgery", str(tmp_path / "s"), model=surgery.get_peft_model(
        runs.base_model(), runs.lora_config("surgery", init_lora_weights="gaussian")))
    assert set(ours.trainer.model.peft_config) == set(theirs.trainer.model.peft_config) == {"default", "ref"}
    _assert_same_run(theirs, ours)


def test_qlora_sft_on_a_4bit_base_equals_trl_with_peft(tmp_path):
    """bitsandbytes nf4 on the CPU; TRL casts the trainable adapter to bf16 for quantized bases, in both."""
    from tests.support.quantized_models import quantized

    theirs = runs.sft_run("peft", str(tmp_path / "p"), model=peft.prepare_model_for_kbit_training(quantized("nf4")))
    ours = runs.sft_run("surgery", str(tmp_path / "s"),
                        model=surgery.prepare_model_for_kbit_training(quantized("nf4")))
    _assert_same_run(theirs, ours)
    assert {v.dtype for k, v in ours.trainer.model.named_parameters() if v.requires_grad} == {torch.bfloat16}
    files = set(os.listdir(tmp_path / "s" / "checkpoint-4"))
    assert ADAPTER_FILES <= files and not files & FULL_MODEL_FILES


def test_grpo_runs_with_plain_generate_and_its_checkpoint_loads_in_peft(tmp_path):
    ours = runs.grpo_run("surgery", str(tmp_path), beta=0.1)
    assert ours.trainer.ref_model is None and len(ours.losses) == 4
    assert all(math.isfinite(v) for v in ours.losses)
    rewards = [e["reward"] for e in ours.logs if "reward" in e]
    kl = [e["kl"] for e in ours.logs if "kl" in e]
    assert rewards and all(math.isfinite(r) for r in rewards) and kl and all(math.isfinite(k) for k in kl)
    assert any(k > 0 for k in kl)   # the reference (adapter disabled) differs from the policy once it trains
    torch.testing.assert_close(_logits_of_checkpoint(peft, ours.trainer), _logits_of_checkpoint(surgery, ours.trainer),
                               rtol=0, atol=1e-5)


def test_trls_own_trainer_with_a_surgery_model_is_refused_clearly(tmp_path):
    import datasets
    import trl

    import surgery.integrations.trl  # noqa: F401  (binds TRL's peft names: the config is accepted)

    with pytest.raises(UnsupportedTrainerError, match="surgery.integrations.trl"):
        trl.SFTTrainer(model=runs.base_model(), args=trl.SFTConfig(**runs._common(str(tmp_path), max_length=24)),
                       train_dataset=datasets.Dataset.from_dict({"text": runs.WORDS}),
                       processing_class=runs.tiny_tokenizer(), peft_config=runs.lora_config("surgery"))


def test_binding_leaves_peft_models_to_peft():
    from trl.trainer import dpo_trainer

    import surgery.integrations.trl as surgery_trl

    surgery_trl.bind()   # idempotent
    theirs = peft.get_peft_model(runs.base_model(), runs.lora_config("peft"))
    ours = surgery.get_peft_model(runs.base_model(), runs.lora_config("surgery"))
    assert dpo_trainer.is_peft_model(theirs) and dpo_trainer.is_peft_model(ours)
    assert not dpo_trainer.is_peft_model(runs.base_model())
    assert type(dpo_trainer.get_peft_model(runs.base_model(), runs.lora_config("peft"))).__module__.startswith("peft")


def test_without_peft_installed_the_runs_are_the_same(paired, tmp_path):
    facts = facts_with_peft_hidden("tests.support.trl_runs", tmp_path, timeout=600)
    assert facts["peft_available"] is False
    assert facts["sft"] == pytest.approx(paired["sft"][0].losses, abs=1e-4)
    assert facts["dpo"] == pytest.approx(paired["dpo"][0].losses, abs=1e-4)
    assert facts["dpo_ref_model"] is False and facts["grpo_kl"] and all(math.isfinite(k) for k in facts["grpo_kl"])
    assert ADAPTER_FILES <= set(facts["files"]) and not set(facts["files"]) & FULL_MODEL_FILES
