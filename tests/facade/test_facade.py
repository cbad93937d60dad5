"""The PeftModel façade as a drop-in for peft's: API surface, task classes, several adapters and generate, all
compared with real peft on the same weights."""
from __future__ import annotations

import copy
import inspect

import pytest
import torch

import surgery
from tests.support import tiny_models as tm
from tests.support.helpers import MODELS, max_diff, peft_model, perturb_adapters, run, surgery_model
from surgery.errors import AdapterNameError

peft = pytest.importorskip("peft")
from peft.tuners.tuners_utils import BaseTuner  # noqa: E402

PUBLIC = ["LoraConfig", "PeftConfig", "PeftModel", "PeftType", "TaskType", "get_peft_model", "get_peft_config",
          "LoraModel", "PeftModelForCausalLM", "PeftModelForSeq2SeqLM", "PeftModelForSequenceClassification",
          "PeftModelForTokenClassification", "PeftModelForQuestionAnswering", "PeftModelForFeatureExtraction",
          "get_peft_model_state_dict", "set_peft_model_state_dict", "MODEL_TYPE_TO_PEFT_MODEL_MAPPING"]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names_exist_as_in_peft(name):
    assert hasattr(peft, name)
    assert hasattr(surgery, name)


SIGNATURES = [
    (peft.get_peft_model, surgery.get_peft_model),
    (peft.PeftModel.__init__, surgery.PeftModel.__init__),
    (peft.PeftModel.from_pretrained, surgery.PeftModel.from_pretrained),
    (peft.PeftModel.save_pretrained, surgery.PeftModel.save_pretrained),
    (peft.PeftModel.load_adapter, surgery.PeftModel.load_adapter),
    (peft.PeftModel.add_adapter, surgery.PeftModel.add_adapter),
    (peft.PeftModel.set_adapter, surgery.PeftModel.set_adapter),
    (peft.PeftModel.delete_adapter, surgery.PeftModel.delete_adapter),
    (BaseTuner.merge_and_unload, surgery.PeftModel.merge_and_unload),
    (BaseTuner.merge_adapter, surgery.PeftModel.merge_adapter),
    (peft.get_peft_model_state_dict, surgery.get_peft_model_state_dict),
    (peft.set_peft_model_state_dict, surgery.set_peft_model_state_dict),
]


# Documented differences in defaults (none today).
KNOWN_DEFAULT_DIFFERENCES: set[str] = set()


@pytest.mark.parametrize("theirs, ours", SIGNATURES, ids=[t.__qualname__ for t, _ in SIGNATURES])
def test_signatures_accept_every_peft_argument_in_peft_order(theirs, ours):
    their_params = inspect.signature(theirs).parameters
    our_params = inspect.signature(ours).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in our_params.values())
    for name, param in their_params.items():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        assert name in our_params or takes_kwargs, name
        if name in our_params and param.default is not param.empty and name not in KNOWN_DEFAULT_DIFFERENCES:
            assert our_params[name].default == param.default, name
    positional = [n for n, p in their_params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [n for n in our_params if n in positional] == [n for n in positional if n in our_params]


def test_task_mapping_matches_peft():
    assert {t.value: cls.__name__ for t, cls in surgery.MODEL_TYPE_TO_PEFT_MODEL_MAPPING.items()} == {
        str(getattr(t, "value", t)): cls.__name__ for t, cls in peft.MODEL_TYPE_TO_PEFT_MODEL_MAPPING.items()}
    for task, cls in surgery.MODEL_TYPE_TO_PEFT_MODEL_MAPPING.items():
        assert issubclass(cls, surgery.PeftModel)
    assert issubclass(surgery.LoraModel, torch.nn.Module)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name, kwargs", [
    ("llama", dict(task_type="CAUSAL_LM", target_modules=["q_proj"])),
    ("bert_cls", dict(task_type="SEQ_CLS", target_modules=["query"])),
    ("bert", dict(task_type="FEATURE_EXTRACTION", target_modules=["query"])),
    ("t5", dict(task_type="SEQ_2_SEQ_LM", target_modules=["q"])),
    ("conv", dict(target_modules=["conv2d"])),
])
def test_get_peft_model_picks_the_same_class_as_peft(name, kwargs):
    base = MODELS[name][0]()
    assert type(surgery_model(base, **kwargs)).__name__ == type(peft_model(base, **kwargs)).__name__
    qa = tm.tiny_bert_qa()
    assert type(surgery_model(qa, task_type="QUESTION_ANS", target_modules=["query"])).__name__ == \
        type(peft_model(qa, task_type="QUESTION_ANS", target_modules=["query"])).__name__
    tok = tm.tiny_bert()
    assert type(surgery_model(tok, task_type="TOKEN_CLS", target_modules=["query"])) is \
        surgery.PeftModelForTokenClassification


def _two_adapters(lib, base):
    model = lib.get_peft_model(copy.deepcopy(base), lib.LoraConfig(target_modules=["q_proj", "v_proj"], r=4))
    model.add_adapter("other", lib.LoraConfig(target_modules=["k_proj", "v_proj", "up_proj"], r=2, lora_alpha=5,
                                              use_dora=True))
    return model


@pytest.mark.filterwarnings("ignore")
def test_several_adapters_behave_as_in_peft():
    base = tm.tiny_llama()
    theirs = _two_adapters(peft, base)
    perturb_adapters(theirs)
    ours = _two_adapters(surgery, base)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    theirs.eval(), ours.eval()
    for adapter in ("default", "other", "default"):
        theirs.set_adapter(adapter)
        ours.set_adapter(adapter)
        assert ours.active_adapter == theirs.active_adapter == adapter
        assert max_diff(run(ours, "llama"), run(theirs, "llama")) <= 1e-5
        assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
            n for n, p in theirs.named_parameters() if p.requires_grad}
    # merging a named adapter while another is active: merged layers run the base weight only, as in peft
    theirs.merge_adapter(adapter_names=["other"])
    ours.merge_adapter(adapter_names=["other"])
    assert max_diff(run(ours, "llama"), run(theirs, "llama")) <= 1e-5
    theirs.unmerge_adapter(), ours.unmerge_adapter()
    theirs.delete_adapter("other")
    ours.delete_adapter("other")
    # peft keeps empty wrappers around the layers only "other" adapted; surgery puts the originals back, so the
    # model is exactly the one-adapter model again
    only_default = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj", "v_proj"]))
    assert list(ours.state_dict()) == list(only_default.state_dict())
    assert len(ours.state_dict()) == len(theirs.state_dict())   # the same tensors; theirs under base_layer keys
    assert ours.active_adapter == theirs.active_adapter == "default"
    assert max_diff(run(ours, "llama"), run(theirs, "llama")) <= 1e-6


@pytest.mark.filterwarnings("ignore")
def test_set_adapter_trainability_matches_peft():
    base = tm.tiny_llama()
    models = {lib.__name__: _two_adapters(lib, base) for lib in (peft, surgery)}
    for kwargs in (dict(), dict(inference_mode=True)):
        for adapter in ("other", "default"):
            flags = []
            for model in models.values():
                model.set_adapter(adapter, **kwargs)
                flags.append({n for n, p in model.named_parameters() if p.requires_grad})
            assert flags[0] == flags[1], (adapter, kwargs)
            assert bool(flags[0]) != bool(kwargs)


@pytest.mark.filterwarnings("ignore")
def test_generate_matches_peft():
    base = tm.tiny_llama()
    theirs = peft_model(base, task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj", "lm_head"], r=4)
    perturb_adapters(theirs, std=0.3)
    ours = surgery_model(base, task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj", "lm_head"], r=4)
    ours.load_state_dict(theirs.state_dict())
    theirs.eval(), ours.eval()
    x = tm.token_batch(batch=1, seq=5)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = theirs.generate(input_ids=x, **kwargs)
        got = ours.generate(input_ids=x, **kwargs)
        plain = base.generate(input_ids=x, **kwargs)
    assert torch.equal(got, want)
    assert not torch.equal(got, plain)


def test_disable_adapter_with_a_trained_head_copy_is_bit_identical():
    base = tm.tiny_bert_seq_cls()
    want = run(base, "bert_cls")
    model = surgery.get_peft_model(base, surgery.LoraConfig(task_type="SEQ_CLS", target_modules=["query"]))
    perturb_adapters(model, biases=False)  # includes the classifier's trainable copy
    model.eval()
    assert max_diff(run(model, "bert_cls"), want) > 1e-3
    with model.disable_adapter():
        assert torch.equal(run(model, "bert_cls"), want)


@pytest.mark.parametrize("bad", ["", "../escape", "a/b", "a.b", "with space", "/abs", "base_layer", 3, None])
def test_unsafe_adapter_names_are_refused(bad):
    model = surgery_model(tm.tiny_llama(), target_modules=["q_proj"])
    keys = list(model.state_dict())
    with pytest.raises(AdapterNameError):
        model.add_adapter(bad, surgery.LoraConfig(target_modules=["k_proj"]))
    with pytest.raises(AdapterNameError):
        surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"]), adapter_name=bad)
    assert list(model.peft_config) == ["default"] and list(model.state_dict()) == keys


def test_adapter_name_errors():
    model = surgery_model(tm.tiny_llama(), target_modules=["q_proj"])
    with pytest.raises(AdapterNameError, match="already exists"):
        model.add_adapter("default", surgery.LoraConfig(target_modules=["k_proj"]))
    with pytest.raises(AdapterNameError, match="nope"):
        model.delete_adapter("nope")
    with pytest.raises(AdapterNameError, match="nope"):
        model.set_adapter("nope")


def test_get_peft_model_revision_is_recorded_without_mutating_the_config(tmp_path):
    cfg = surgery.LoraConfig(target_modules=["q_proj"])
    model = surgery.get_peft_model(tm.tiny_llama(), cfg, revision="v1.2")
    assert cfg.revision is None
    assert model.peft_config["default"].revision == "v1.2"
    model.save_pretrained(str(tmp_path))
    assert surgery.load_config(tmp_path).revision == "v1.2"


def test_add_adapter_failure_leaves_the_model_as_it_was():
    model = surgery_model(tm.tiny_llama(), target_modules=["q_proj"])
    keys = list(model.state_dict())
    with pytest.raises(surgery.SurgeryError):
        model.add_adapter("second", surgery.LoraConfig(target_modules=["q_prj"]))
    with pytest.raises(surgery.SurgeryError):
        model.add_adapter("third", surgery.LoraConfig(target_modules=["q_proj", "mlp"]))
    assert list(model.state_dict()) == keys and list(model.peft_config) == ["default"]
    model.add_adapter("second", surgery.LoraConfig(target_modules=["q_proj"]))  # the name is still free


@pytest.mark.filterwarnings("ignore")
def test_only_one_adapter_may_train_biases_as_in_peft():
    for lib in (surgery, peft):
        model = lib.get_peft_model(tm.tiny_llama(attention_bias=True), lib.LoraConfig(target_modules=["q_proj"],
                                                                                     bias="lora_only"))
        model.add_adapter("plain", lib.LoraConfig(target_modules=["k_proj"]))   # bias "none": fine in both
        with pytest.raises(ValueError, match="bias"):
            model.add_adapter("biased", lib.LoraConfig(target_modules=["v_proj"], bias="all"))
    assert list(model.peft_config) == ["default", "plain"]
