"""The PeftModel façade: task classes, adapters on/off, plans and audits, training helpers."""
import io
from contextlib import redirect_stdout

import pytest
import torch

import surgery
from tests.support import tiny_models


def _lora(**kwargs):
    return surgery.LoraConfig(target_modules=["q_proj", "v_proj"], r=4, init_lora_weights=False, **kwargs)


def test_task_classes_and_heads():
    model = surgery.get_peft_model(tiny_models.tiny_bert_seq_cls(),
                                   surgery.LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=4))
    assert type(model) is surgery.PeftModelForSequenceClassification
    assert model.cls_layer_name == "classifier"
    assert "classifier" in model.modules_to_save
    assert all(p.requires_grad for p in model.base_model.model.classifier.modules_to_save["default"].parameters())
    qa = surgery.get_peft_model(tiny_models.tiny_bert_qa(), surgery.LoraConfig(
        task_type="QUESTION_ANS", target_modules=["query", "value"], r=4))
    assert type(qa) is surgery.PeftModelForQuestionAnswering and qa.cls_layer_name == "qa_outputs"
    assert type(surgery.get_peft_model(tiny_models.tiny_llama(), _lora(task_type="CAUSAL_LM"))) \
        is surgery.PeftModelForCausalLM


def test_print_trainable_parameters_line_format():
    model = surgery.get_peft_model(tiny_models.tiny_llama(), _lora())
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        model.print_trainable_parameters()
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == 896 and total == 26784 + 896
    assert buffer.getvalue() == f"trainable params: 896 || all params: {total:,d} || trainable%: " \
                                f"{100 * 896 / total:.4f}\n"


def test_plan_and_audit_record_each_adapter():
    model = surgery.get_peft_model(tiny_models.tiny_llama(), _lora())
    model.add_adapter("other", surgery.LoraConfig(target_modules=["o_proj"], r=2))
    assert model.plan().paths() == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                    "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    assert model.plan("other").paths() == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"]
    model.merge_adapter()
    audit = model.audit()
    assert "[default: active, merged]" in audit and "[other: inactive]" in audit


def test_set_delete_adapter_and_active_state():
    model = surgery.get_peft_model(tiny_models.tiny_llama(), _lora())
    model.add_adapter("other", surgery.LoraConfig(target_modules=["o_proj"], r=2, init_lora_weights=False))
    x = tiny_models.token_batch()
    with torch.no_grad():
        a = model(x).logits
        model.set_adapter("other")
        b = model(x).logits
    assert model.active_adapter == "other" and not torch.allclose(a, b)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".other." in n for n in trainable)
    model.delete_adapter("other")
    assert model.active_adapter == "default" and list(model.peft_config) == ["default"]
    assert not any(".other." in n for n, _ in model.named_parameters())
    with pytest.raises(surgery.SurgeryError, match="not found"):
        model.set_adapter("other")


def test_disable_adapter_is_bit_identical_and_restores():
    base = tiny_models.tiny_llama()
    x = tiny_models.token_batch()
    with torch.no_grad():
        expected = base(x).logits
    model = surgery.get_peft_model(base, _lora()).eval()
    with torch.no_grad():
        adapted = model(x).logits
        with model.disable_adapter():
            assert torch.equal(model(x).logits, expected)
        assert torch.equal(model(x).logits, adapted)


def test_attribute_passthrough_and_state_dict_keys():
    model = surgery.get_peft_model(tiny_models.tiny_llama(), _lora())
    assert model.config.model_type == "llama"
    assert model.get_input_embeddings() is model.get_base_model().model.embed_tokens
    keys = surgery.get_peft_model_state_dict(model)
    assert sorted(keys)[0] == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = surgery.get_peft_model(tiny_models.tiny_llama(), _lora())
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": True})
        x = tiny_models.token_batch()
        model(input_ids=x, labels=x).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_user_config_is_not_mutated_by_task_heads():
    config = surgery.LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=4)
    before = config.to_dict()
    surgery.get_peft_model(tiny_models.tiny_bert_seq_cls(), config)
    assert config.to_dict() == before
