"""A plain transformers.Trainer with a surgery model: refused with a message naming SurgeryTrainer (it would write
full-model checkpoints), before anything is written; and PeftModel.forward shows the base model's signature, so
the Trainer's column filtering keeps what the model takes."""
from __future__ import annotations

import inspect
import os

import pytest
import torch
from transformers import Trainer, TrainingArguments

import surgery
from surgery.errors import UnsupportedTrainerError
from surgery.facade.trainer_guard import trainer_allowed
from surgery.integrations.trainer import SurgeryTrainer
from tests.support import tiny_models
from tests.support import trainer_case as case


def _args(tmp_path, **extra):
    return TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2,
                             use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="steps", save_steps=1,
                             **extra)


def test_plain_trainer_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(UnsupportedTrainerError, match="SurgeryTrainer") as caught:
        Trainer(model=case.lora_model(), args=_args(tmp_path), train_dataset=case.TinyClassification())
    message = str(caught.value)
    assert "full model" in message and "surgery.integrations.trl" in message and "SurgeryTrainerMixin" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_trainer_subclass_without_the_mixin_is_refused_and_with_it_saves_the_adapter(tmp_path):
    class Custom(Trainer):
        pass

    with pytest.raises(UnsupportedTrainerError):
        Custom(model=case.lora_model(), args=_args(tmp_path), train_dataset=case.TinyClassification())

    class Mixed(surgery.integrations.trainer.SurgeryTrainerMixin, Custom):
        pass

    Mixed(model=case.lora_model(), args=_args(tmp_path), train_dataset=case.TinyClassification()).train()
    files = os.listdir(tmp_path / "out" / "checkpoint-2")
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files


def test_peft_models_are_not_affected(tmp_path):
    import peft

    model = peft.get_peft_model(case.base_model(), peft.LoraConfig(task_type="SEQ_CLS", target_modules=["query"]))
    Trainer(model=model, args=_args(tmp_path), train_dataset=case.TinyClassification())   # constructs


def test_accepts_loss_kwargs_is_refused_to_trainers_only():
    model = surgery.get_peft_model(tiny_models.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"]))
    # any other reader gets the base model's answer: Llama's forward takes **kwargs (they reach its loss)
    assert model.accepts_loss_kwargs is True
    assert "accepts_loss_kwargs" in {name for name in dir(model) if hasattr(model, name)}   # dir()/getattr() loops

    class Reader(Trainer):
        def __init__(self, model):   # reads as Trainer.__init__ does, without the rest of the Trainer
            self.answer = hasattr(model, "accepts_loss_kwargs")

    with pytest.raises(UnsupportedTrainerError):
        Reader(model)
    with trainer_allowed():
        assert Reader(model).answer is True
    with pytest.raises(UnsupportedTrainerError):   # the context ends with the block
        Reader(model)


def _parameter_names(model) -> list[str]:
    return list(inspect.signature(model.forward).parameters)


def test_forward_shows_the_base_models_parameters_and_adapter_names():
    base = tiny_models.tiny_llama()
    model = surgery.get_peft_model(base, surgery.LoraConfig(target_modules=["q_proj"]))
    base_names = list(inspect.signature(type(base).forward).parameters)[1:]
    names = _parameter_names(model)
    assert names[:len(base_names) - 1] == [n for n in base_names if n != "kwargs"]
    assert names[-2:] == ["adapter_names", "kwargs"]
    # the signature tells the truth: positionals bind to the base model's order
    ids = tiny_models.token_batch()
    mask = torch.ones_like(ids)
    inspect.signature(model.forward).bind(ids, mask)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask).logits, base(ids, mask).logits, rtol=0, atol=0)


def test_task_classes_keep_pefts_positional_order_and_add_the_base_models_names():
    model = surgery.get_peft_model(tiny_models.tiny_bert_seq_cls(), surgery.LoraConfig(
        task_type="SEQ_CLS", target_modules=["query"]))
    names = _parameter_names(model)
    # PEFT's PeftModelForSequenceClassification.forward order, then BERT's own names (token_type_ids, ...)
    assert names[:4] == ["input_ids", "attention_mask", "inputs_embeds", "labels"]
    assert "token_type_ids" in names and "position_ids" in names
    kinds = {p.name: p.kind for p in inspect.signature(model.forward).parameters.values()}
    assert kinds["token_type_ids"] is inspect.Parameter.KEYWORD_ONLY


def test_each_model_reports_its_own_base_signature():
    llama = surgery.get_peft_model(tiny_models.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"]))
    bert = surgery.get_peft_model(tiny_models.tiny_bert_seq_cls(), surgery.LoraConfig(target_modules=["query"]))
    assert "token_type_ids" in _parameter_names(bert) and "token_type_ids" not in _parameter_names(llama)


class _WithExtraColumns(case.TinyClassification):
    def __getitem__(self, i):
        return {**super().__getitem__(i), "token_type_ids": torch.zeros(8, dtype=torch.long), "source": "web"}


def test_column_filtering_keeps_the_models_inputs_and_drops_the_rest(tmp_path):
    """remove_unused_columns reads PeftModel.forward: a string column would break the collator if kept, and
    token_type_ids (BERT's, not in PEFT's task signature) is kept as the Trainer keeps it for peft models."""
    import datasets

    rows = [_WithExtraColumns()[i] for i in range(8)]
    data = datasets.Dataset.from_list([{k: (v.tolist() if torch.is_tensor(v) else v) for k, v in r.items()}
                                       for r in rows])
    base = case.base_model()
    model = surgery.get_peft_model(base, surgery.LoraConfig(target_modules=["query"], modules_to_save=["classifier"]))
    trainer = SurgeryTrainer(model=model, args=_args(tmp_path, remove_unused_columns=True), train_dataset=data)
    kept = trainer._remove_unused_columns(data).column_names
    assert sorted(kept) == ["input_ids", "labels", "token_type_ids"]
    trainer.train()
    assert trainer.state.global_step == 2
