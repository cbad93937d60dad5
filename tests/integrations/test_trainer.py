"""transformers' Trainer on surgery models: adapter-only checkpoints in PEFT's format, resuming, evaluation,
gradient checkpointing through TrainingArguments; the same with `peft` hidden from transformers."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

import surgery
from tests.support import facts_with_peft_hidden
from tests.support import trainer_case as case


# What a Trainer checkpoint of a LoRA model holds: the adapter in PEFT's format, and the Trainer's own state.
CHECKPOINT_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "optimizer.pt",
                    "rng_state.pth", "scheduler.pt", "trainer_state.json", "training_args.bin"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trainer")
    trainer, model = case.train(str(out / "full"))
    return out, trainer, model


def test_checkpoints_hold_the_adapter_in_peft_format_not_the_model(full_run):
    out, _, model = full_run
    assert sorted(os.listdir(out / "full")) == ["checkpoint-2", "checkpoint-4"]
    for step in (2, 4):
        ckpt = out / "full" / f"checkpoint-{step}"
        assert sorted(os.listdir(ckpt)) == CHECKPOINT_FILES
        tensors = load_file(str(ckpt / "adapter_model.safetensors"))
        assert sorted(tensors) == sorted(surgery.get_peft_model_state_dict(model))
        assert all(k.startswith("base_model.model.") and ".default." not in k for k in tensors)
        config = json.loads((ckpt / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
        assert (ckpt / "adapter_model.safetensors").stat().st_size < 20_000  # the adapter, not the 0.1 MB model
    final = load_file(str(out / "full" / "checkpoint-4" / "adapter_model.safetensors"))
    for key, value in case.adapter_state(model).items():
        assert torch.equal(final[key], value)


def test_resume_from_a_checkpoint_continues_the_same_run(full_run, tmp_path):
    out, _, model = full_run
    _, resumed = case.train(str(tmp_path / "resumed"), resume=str(out / "full" / "checkpoint-2"))
    expected, got = case.adapter_state(model), case.adapter_state(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-6)
    # the resumed model's adapter was still trainable and moved away from checkpoint-2's values
    at_2 = load_file(str(out / "full" / "checkpoint-2" / "adapter_model.safetensors"))
    assert any(not torch.equal(at_2[k], got[k]) for k in got)


def test_checkpoint_loads_in_peft_with_equal_predictions(full_run):
    import peft

    out, _, model = full_run
    x = case.TinyClassification(4, seed=3).x
    ref = peft.PeftModel.from_pretrained(case.base_model(), str(out / "full" / "checkpoint-4")).eval()
    mine = surgery.PeftModel.from_pretrained(case.base_model(), str(out / "full" / "checkpoint-4")).eval()
    with torch.no_grad():
        torch.testing.assert_close(mine(input_ids=x).logits, ref(input_ids=x).logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(mine(input_ids=x).logits, model.eval()(input_ids=x).logits, atol=1e-6, rtol=0)


def test_evaluate_reports_the_loss_and_finds_the_labels(full_run):
    _, trainer, _ = full_run
    assert trainer.label_names == ["labels"]
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and metrics["eval_loss"] > 0


def test_trainer_gradient_checkpointing_trains_the_same(tmp_path):
    _, plain = case.train(str(tmp_path / "plain"), max_steps=2, save_strategy="no")
    _, checkpointed = case.train(str(tmp_path / "gc"), max_steps=2, save_strategy="no", gradient_checkpointing=True,
                                 gradient_checkpointing_kwargs={"use_reentrant": True})
    assert checkpointed.get_base_model().is_activation_checkpointing
    a, b = case.adapter_state(plain), case.adapter_state(checkpointed)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5)


def test_saving_and_resuming_work_with_peft_hidden(tmp_path):
    facts = facts_with_peft_hidden("tests.support.trainer_case", tmp_path, timeout=180)
    assert facts["peft_available"] is False
    assert facts["files"] == CHECKPOINT_FILES
    assert facts["resume_max_diff"] <= 1e-6


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("config", [
    surgery.IA3Config(task_type="SEQ_CLS", target_modules=["key", "value", "output.dense"],
                      feedforward_modules=["output.dense"]),
    surgery.OFTConfig(task_type="SEQ_CLS", target_modules=["query", "value"], oft_block_size=8),
    surgery.LoHaConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=4),
], ids=lambda c: c.peft_type.value)
def test_other_methods_train_and_checkpoint_in_peft_format(config, tmp_path):
    """The Trainer integration is method-blind: any method trains, and its checkpoints load in peft."""
    import peft

    model = surgery.get_peft_model(case.base_model(), config)
    before = case.adapter_state(model)
    case.train(str(tmp_path), model=model)
    ckpt = tmp_path / "checkpoint-4"
    assert sorted(os.listdir(ckpt)) == CHECKPOINT_FILES
    after = case.adapter_state(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)   # it trained
    x = case.TinyClassification(4, seed=3).x
    ref = peft.PeftModel.from_pretrained(case.base_model(), str(ckpt)).eval()
    with torch.no_grad():
        torch.testing.assert_close(ref(input_ids=x).logits, model.eval()(input_ids=x).logits, atol=1e-5, rtol=0)
