"""Behaviours PEFT's own suite checks, recorded here against real peft: merged adapters cannot be deleted,
re-merging warns, disable_adapter() restores each layer as it was, modules_to_save copies answer attribute
reads, and the PeftModel attributes user code probes."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import surgery

peft = pytest.importorskip("peft")


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0, self.lin1 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.lin1(self.lin0(x))


def pair(**kwargs):
    config = dict(target_modules=["lin0"], init_lora_weights=False, **kwargs)
    torch.manual_seed(0)
    theirs = peft.get_peft_model(MLP(), peft.LoraConfig(**config), adapter_name="a0")
    torch.manual_seed(0)
    ours = surgery.get_peft_model(MLP(), surgery.LoraConfig(**config), adapter_name="a0")
    return theirs, ours


def test_a_merged_adapter_cannot_be_deleted_and_nothing_changes():
    for model, lib in zip(pair(), (peft, surgery)):
        model.add_adapter("a1", lib.LoraConfig(target_modules=["lin0"]))
        model.set_adapter("a1")
        model.merge_adapter()
        with pytest.raises(ValueError, match=re.escape("Cannot delete adapter(s) ['a1'] while they are merged")):
            model.delete_adapter("a1")
        assert set(model.peft_config) == {"a0", "a1"}
        model.delete_adapter("a0")   # the unmerged one still can be
        assert model.base_model.model.lin0.merged_adapters == ["a1"]


def test_unknown_adapter_is_named_in_peft_words():
    for model in pair():
        with pytest.raises(ValueError, match="Adapter nope does not exist"):
            model.delete_adapter("nope")


def test_merging_again_warns_once_in_peft_words():
    _, ours = pair()
    ours.merge_adapter()
    with pytest.warns(surgery.PeftWarning, match="All adapters are already merged, nothing to do") as record:
        ours.merge_adapter()
    assert len(record) == 1


def test_disable_adapter_context_restores_the_layers_as_they_were():
    for model in pair(modules_to_save=["lin1"]):   # as PEFT, with every layer off before the block
        model.disable_adapter_layers()
        with model.disable_adapter():
            pass
        assert model.base_model.model.lin0.disable_adapters
        model.enable_adapter_layers()
        with model.disable_adapter():
            pass
        assert not model.base_model.model.lin0.disable_adapters
    for model in pair(modules_to_save=["lin1"]):   # a mixed state warns, and the block ends it (as PEFT)
        model.base_model.model.lin0.enable_adapters(False)
        with pytest.warns(UserWarning, match="some adapter layers that are enabled and others that are disabled"):
            with model.disable_adapter():
                pass
        assert not model.base_model.model.lin0.disable_adapters and not model.base_model.model.lin1.disable_adapters


def test_disabling_a_layer_freezes_its_adapter_and_enabling_restores_the_flags():
    theirs, ours = pair()
    for model in (theirs, ours):
        model.base_model.model.lin0.enable_adapters(False)
    grads = lambda m: {n: p.requires_grad for n, p in m.named_parameters() if "lora_" in n}   # noqa: E731
    assert grads(ours) == grads(theirs) and not any(grads(ours).values())
    ours.base_model.model.lin0.enable_adapters(True)
    assert all(grads(ours).values())


def test_modules_to_save_copy_answers_attribute_reads_as_peft():
    for model in pair(modules_to_save=["lin1"]):
        wrapper = model.base_model.model.lin1
        assert wrapper.bias is wrapper.modules_to_save["a0"].bias and wrapper.in_features == 4
        with model.disable_adapter():
            assert wrapper.weight is wrapper.original_module.weight
        with pytest.raises(AttributeError):
            wrapper.no_such_attribute


def test_attributes_user_code_probes():
    theirs, ours = pair()
    for name in ("push_to_hub", "save_pretrained", "from_pretrained", "has_active_enabled_adapter"):
        assert hasattr(ours, name) and hasattr(theirs, name)
    assert ours.has_active_enabled_adapter is theirs.has_active_enabled_adapter is True
    layer, their_layer = ours.base_model.model.lin0, theirs.base_model.model.lin0
    assert layer._all_available_adapter_names() == their_layer._all_available_adapter_names() == ["a0"]
    assert repr(layer).startswith("lora.Linear(") and repr(their_layer).startswith("lora.Linear(")


def test_every_adapter_layer_exposes_in_and_out_features_as_peft():
    for name, kwargs in (("IA3Config", dict(feedforward_modules=[])), ("LoHaConfig", {}), ("OFTConfig", dict(r=2, oft_block_size=0)),
                         ("HRAConfig", {}), ("LoraConfig", {})):
        ours = surgery.get_peft_model(MLP(), getattr(surgery, name)(target_modules=["lin0"], **kwargs))
        layer = ours.base_model.model.lin0
        assert (layer.in_features, layer.out_features) == (4, 4), name


def test_tuner_flags_and_unsupported_inits_match_peft():
    for peft_type, tuner in surgery.PEFT_TYPE_TO_TUNER_MAPPING.items():
        assert tuner.uses_shared_state == peft.PEFT_TYPE_TO_TUNER_MAPPING[peft_type].uses_shared_state, peft_type
    for init in ("pissa", "pissa_niter_4", "olora", "orthogonal"):   # implemented (tests/methods/lora)
        assert surgery.LoraConfig(init_lora_weights=init).init_lora_weights == init
    for init in ("mica", "lora_ga"):   # "eva": implemented (tests/methods/lora/test_eva.py)
        peft.LoraConfig(init_lora_weights=init)   # PEFT accepts it; surgery names what it supports instead
        with pytest.raises(surgery.errors.UnsupportedOptionError, match="supported: True, False, 'gaussian'"):
            surgery.LoraConfig(init_lora_weights=init)


def test_model_card_of_a_custom_model_names_no_base_model(tmp_path):
    ours = surgery.get_peft_model(MLP(), surgery.LoraConfig(target_modules=["lin0"], base_model_name_or_path="x"))
    ours.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "library_name: peft" in card and "base_model" not in card.split("---")[1]


def test_an_adapter_loaded_trainable_trains_though_not_active_as_peft(tmp_path):
    theirs, ours = pair()
    ours.save_pretrained(tmp_path)
    grads = {}
    for lib in (peft, surgery):
        model = lib.PeftModel.from_pretrained(MLP(), str(tmp_path / "a0"), adapter_name="a0", is_trainable=True)
        model.load_adapter(str(tmp_path / "a0"), adapter_name="other", is_trainable=True)
        grads[lib.__name__] = {n: p.requires_grad for n, p in model.named_parameters()}
    assert grads["surgery"] == grads["peft"] and grads["surgery"]["base_model.model.lin0.lora_A.other.weight"]


def test_two_active_adapters_with_copies_of_one_module_are_refused_before_any_change():
    for model, lib in zip(pair(modules_to_save=["lin1"]), (peft, surgery)):
        model.add_adapter("other", lib.LoraConfig(target_modules=["lin0"], modules_to_save=["lin1"]))
        with pytest.raises(ValueError, match="Only one adapter can be set at a time for ModulesToSaveWrapper"):
            model.base_model.set_adapter(["a0", "other"])
        assert model.active_adapters == ["a0"]


def test_lora_scaling_at_run_time_equals_peft():
    theirs, ours = pair(use_rslora=True, lora_alpha=6, r=4)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4)
    for call in (lambda l: l.set_scale("a0", 0.5), lambda l: l.scale_layer(3.0), lambda l: l.unscale_layer(2.0),
                 lambda l: l.unscale_layer(), lambda l: l.set_scale("unknown", 9.0)):
        for model in (theirs, ours):
            call(model.base_model.model.lin0)
        assert ours.base_model.model.lin0.scaling == theirs.base_model.model.lin0.scaling
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=0)


def test_attribute_probes_before_init_do_not_recurse(monkeypatch):
    # DeepSpeed wraps __init__ and calls hasattr(self, ...) before nn.Module.__init__ has run (PEFT #1892)
    original = surgery.PeftModel.__init__

    def wrapped(self, *args, **kwargs):
        assert not hasattr(self, "anything")
        original(self, *args, **kwargs)

    monkeypatch.setattr(surgery.PeftModel, "__init__", wrapped)
    assert surgery.PeftModel(MLP(), surgery.LoraConfig(target_modules=["lin0"])).active_adapters == ["default"]


def test_saved_base_biases_load_into_a_model_whose_config_trains_none_as_peft():
    results = []
    for lib in (peft, surgery):
        torch.manual_seed(0)
        trained = lib.get_peft_model(MLP(), lib.LoraConfig(target_modules=["lin0"], bias="all"))
        with torch.no_grad():
            trained.base_model.model.lin0.base_layer.bias.fill_(1.23)
        state = lib.get_peft_model_state_dict(trained)
        torch.manual_seed(0)
        fresh = lib.get_peft_model(MLP(), lib.LoraConfig(target_modules=["lin0"]))
        lib.set_peft_model_state_dict(fresh, state)
        results.append(fresh.base_model.model.lin0.base_layer.bias.detach().clone())
    assert torch.equal(results[0], results[1]) and torch.all(results[1] == 1.23)


def test_prepare_model_for_gradient_checkpointing_marks_input_grads_as_peft():
    import peft

    from tests.support import tiny_models as tm
    ours = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"]))
    theirs = peft.get_peft_model(tm.tiny_llama(), peft.LoraConfig(target_modules=["q_proj"]))
    for model in (ours, theirs):
        base = tm.tiny_llama()
        assert model.prepare_model_for_gradient_checkpointing(base) is None
        out = base.get_input_embeddings()(tm.token_batch())
        assert out.requires_grad


@pytest.mark.parametrize("cls_name", ["PeftModelForCausalLM", "PeftModelForSeq2SeqLM", "PeftModelForSequenceClassification",
                                      "PeftModelForTokenClassification", "PeftModelForQuestionAnswering",
                                      "PeftModelForFeatureExtraction"])
def test_task_classes_forward_has_peft_signature(cls_name):
    """transformers' Trainer keeps the dataset columns the forward signature names (remove_unused_columns)."""
    import inspect

    import peft
    assert inspect.signature(getattr(surgery, cls_name).forward) == inspect.signature(getattr(peft, cls_name).forward)


def test_task_forward_binds_positional_arguments_by_peft_names():
    from tests.support import tiny_models as tm
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"]))
    ids = tm.token_batch()
    mask = torch.ones_like(ids)
    by_name = model(input_ids=ids, attention_mask=mask, labels=ids)
    by_position = model(ids, mask, None, ids)   # input_ids, attention_mask, inputs_embeds, labels
    torch.testing.assert_close(by_position.loss, by_name.loss)
    with pytest.raises(TypeError, match="multiple values for input_ids"):
        model(ids, input_ids=ids)


def test_prompt_learning_models_have_no_parameter_prefix_as_in_peft():
    """Code tells layer adapters from prompt learning with hasattr(model, "prefix") (PEFT's own tests do)."""
    from tests.support import tiny_models as tm
    prompt = surgery.get_peft_model(tm.tiny_llama(), surgery.PromptTuningConfig(task_type="CAUSAL_LM",
                                                                                num_virtual_tokens=4))
    lora = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"]))
    assert not hasattr(prompt, "prefix")
    assert lora.prefix == "lora_"


def test_shared_per_adapter_tensors_answer_membership_like_peft_buffer_dict():
    from tests.support import tiny_models as tm
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.VeraConfig(target_modules=["q_proj"], r=4))
    model.add_adapter("other", surgery.VeraConfig(target_modules=["q_proj"], r=4))
    holder = model.base_model.vera_A
    assert "default" in holder and "other" in holder and "missing" not in holder
