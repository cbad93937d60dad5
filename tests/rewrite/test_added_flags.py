"""Adding an adapter sets only the new adapter's requires_grad flags (rewrite/added.py) when nothing else changed
them; the model must end exactly as mark_trainable, which sets every flag from scratch, leaves it. Each step
below adds an adapter, then runs mark_trainable with the same arguments and checks that it changes nothing:
no flag and no layer's active adapters. The steps cover what can leave flags off the recorded state (another
adapter trained by set_requires_grad, set_adapter, the functional API, a hand-frozen model, adapters turned
off), layers only inactive adapters hold, wrappers, and bias / inference_mode adds."""
from __future__ import annotations

import warnings

import surgery
import surgery.functional as functional
from surgery.graph.walk import is_adapter_layer
from surgery.rewrite.trainable import mark_trainable
from tests.support import tiny_models as tm


def state(model) -> tuple:
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    active = {name: list(m.active_adapters) for name, m in model.named_modules() if is_adapter_layer(m)}
    return flags, active


def assert_as_full_marking(model, name: str) -> None:
    inner = model.get_base_model()
    before = state(inner)
    mark_trainable(inner, model.peft_config[name], model.active_adapters, model.plan(name).paths())
    assert state(inner) == before


def add(model, name: str, **kwargs) -> None:
    model.add_adapter(name, surgery.LoraConfig(**{"r": 2, "target_modules": ["q_proj", "v_proj"], **kwargs}))
    assert_as_full_marking(model, name)


def test_adds_on_a_model_left_as_marked():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    add(model, "a0")
    add(model, "k", target_modules=["k_proj"])          # layers that no active adapter holds
    add(model, "k2", target_modules=["k_proj"])         # ... given one more (inactive) adapter
    add(model, "saved", modules_to_save=["lm_head"])   # a new modules_to_save wrapper
    add(model, "saved2", modules_to_save=["lm_head"])  # the wrapper given another copy
    add(model, "dora", use_dora=True)
    add(model, "tokens", trainable_token_indices=[1, 2])
    add(model, "tokens2", trainable_token_indices=[3])
    add(model, "frozen", inference_mode=True)           # trainable=False: every flag set again
    add(model, "after")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)


def test_adds_after_flags_were_changed_elsewhere():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    add(model, "a0")
    model.set_requires_grad("a0", True)   # an inactive adapter trained too: the next add freezes it, as before
    add(model, "a1")
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".a0." in n)
    model.set_adapter("a1")
    add(model, "a2")
    model.set_adapter("a1", inference_mode=True)
    add(model, "a3")
    functional.set_adapter(model.get_base_model(), "a0")   # the layers' active adapters, behind the tuner's back
    add(model, "a4")
    for p in model.parameters():   # frozen by hand (as prepare_model_for_kbit_training does)
        p.requires_grad_(False)
    add(model, "a5")
    with model.disable_adapter():
        add(model, "a6")
    model.get_base_model().model.norm.weight.requires_grad_(True)   # a base weight unfrozen by hand: frozen again
    add(model, "a7")
    assert not model.get_base_model().model.norm.weight.requires_grad
    model.requires_grad_(True)   # everything unfrozen by hand: the next add freezes all but the active adapter
    add(model, "a8")
    assert all(".a1." in n for n, p in model.named_parameters() if p.requires_grad)


def test_adds_after_a_bias_adapter():
    model = surgery.get_peft_model(tm.tiny_bert_seq_cls(), surgery.LoraConfig(
        r=2, target_modules=["query", "value"], bias="lora_only", task_type="SEQ_CLS"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.add_adapter("b", surgery.LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS"))
    assert_as_full_marking(model, "b")
    model.add_adapter("c", surgery.LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS"))
    assert_as_full_marking(model, "c")
