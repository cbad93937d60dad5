"""Prompt adapters on disk in PEFT's format: `prompt_embeddings` (+ `base_model.<head>` copies); saved by surgery
and loaded by PEFT with equal outputs, and the other way round."""
from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

import surgery
from tests.support.prompt_cases import MODELS, P, inputs, output_of, pair

peft = pytest.importorskip("peft")

CASES = [(m, meth) for m in ("llama", "t5") for meth in ("prefix", "prefix_projection", "prompt", "ptuning_mlp",
                                                         "ptuning_lstm")]
CASES += [("bert", "prompt"), ("bert", "ptuning_mlp")]


def _out(model, kwargs):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return output_of(model(**kwargs))


def _fresh_base(model_name):
    return MODELS[model_name][0]()


@pytest.mark.parametrize("model,method", CASES)
def test_saved_by_surgery_loads_in_peft_and_back(model, method, tmp_path):
    pm, sm = pair(model, method)
    kwargs = inputs(model)
    expected = _out(sm, kwargs)
    sm.save_pretrained(tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(_fresh_base(model), str(tmp_path / "ours")).eval()
    torch.testing.assert_close(_out(theirs, kwargs), expected, atol=1e-5, rtol=0)
    ours = surgery.PeftModel.from_pretrained(_fresh_base(model), tmp_path / "ours")
    torch.testing.assert_close(_out(ours, kwargs), expected, atol=1e-5, rtol=0)
    # same parameters; PEFT leaves a loaded (inference) prompt encoder trainable, surgery freezes it
    assert ours.get_nb_trainable_parameters()[1] == theirs.get_nb_trainable_parameters()[1]
    assert not ours.training and not any(p.requires_grad for p in ours.prompt_encoder.parameters())


@pytest.mark.parametrize("model,method", CASES)
def test_saved_by_peft_loads_in_surgery(model, method, tmp_path):
    pm, _ = pair(model, method)
    pm.save_pretrained(str(tmp_path))
    ours = surgery.PeftModel.from_pretrained(_fresh_base(model), tmp_path)
    assert type(ours).__name__ == type(pm).__name__
    kwargs = inputs(model)
    torch.testing.assert_close(_out(ours, kwargs), _out(pm, kwargs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["prefix", "prompt", "ptuning_mlp"])
def test_files_hold_the_same_keys_and_values_as_peft(method, tmp_path):
    pm, sm = pair("bert", method) if method != "prefix" else pair("llama", method)
    pm.save_pretrained(str(tmp_path / "peft"))
    sm.save_pretrained(tmp_path / "surgery")
    theirs = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    ours = load_file(str(tmp_path / "surgery" / "adapter_model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-6, rtol=0)
    if method != "prefix":   # SEQ_CLS: the classifier copy under PEFT's prompt-learning prefix
        assert {"prompt_embeddings", "base_model.classifier.weight", "base_model.classifier.bias"} == set(ours)
    config = json.loads((tmp_path / "surgery" / "adapter_config.json").read_text())
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert set(config) == set(peft_config)
    for key in ("num_virtual_tokens", "token_dim", "num_layers", "num_attention_heads", "peft_type", "task_type"):
        assert config[key] == peft_config[key], key


def test_training_mode_saves_the_encoder_output_and_inference_mode_the_embedding(tmp_path):
    _, sm = pair("llama", "ptuning_mlp")
    saved = surgery.get_peft_model_state_dict(sm)["prompt_embeddings"]
    torch.testing.assert_close(saved, sm.get_prompt_embedding_to_save("default"))
    assert not torch.equal(saved, sm.prompt_encoder.default.embedding.weight.detach())
    sm.save_pretrained(tmp_path)
    loaded = surgery.PeftModel.from_pretrained(_fresh_base("llama"), tmp_path)
    assert loaded.peft_config["default"].inference_mode
    assert not hasattr(loaded.prompt_encoder.default, "mlp_head")   # frozen: the output is stored as is
    torch.testing.assert_close(surgery.get_peft_model_state_dict(loaded)["prompt_embeddings"], saved)


def test_bert_prefix_adapters_move_both_ways(tmp_path):
    """PEFT 0.21 cannot run prefix tuning on BERT under transformers 5, but it writes and reads the files."""
    builder, task = MODELS["bert"]
    ours = surgery.get_peft_model(builder(), surgery.PrefixTuningConfig(task_type=task, num_virtual_tokens=P))
    ours.save_pretrained(tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(builder(), str(tmp_path / "ours"))
        torch.testing.assert_close(theirs.prompt_encoder.default.embedding.weight,
                                   ours.prompt_encoder.default.embedding.weight, atol=0, rtol=0)
        theirs.save_pretrained(str(tmp_path / "peft"))
    back = surgery.PeftModel.from_pretrained(builder(), tmp_path / "peft")
    torch.testing.assert_close(_out(back, inputs("bert")), _out(ours.eval(), inputs("bert")), atol=1e-6, rtol=0)


def test_prompt_adapters_cannot_be_loaded_trainable(tmp_path):
    _, sm = pair("llama", "prompt")
    sm.save_pretrained(tmp_path)
    base = _fresh_base("llama")
    with pytest.raises(surgery.SurgeryError, match="is_trainable"):
        surgery.PeftModel.from_pretrained(base, tmp_path, is_trainable=True)
    assert not any(m._forward_pre_hooks for m in base.modules())


def test_several_prompt_adapters_save_load_and_switch(tmp_path):
    _, sm = pair("gpt2", "prompt")
    second = surgery.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P + 2)
    sm.add_adapter("other", second)
    kwargs = inputs("gpt2")
    first_out = _out(sm, kwargs)
    sm.set_adapter("other")
    other_out = _out(sm, kwargs)
    assert other_out.shape[1] == first_out.shape[1] + 2
    sm.save_pretrained(tmp_path)
    assert (tmp_path / "other" / "adapter_model.safetensors").is_file()
    loaded = surgery.PeftModel.from_pretrained(_fresh_base("gpt2"), tmp_path)
    loaded.load_adapter(tmp_path / "other", adapter_name="other")
    torch.testing.assert_close(_out(loaded, kwargs), first_out, atol=1e-6, rtol=0)
    loaded.set_adapter("other")
    torch.testing.assert_close(_out(loaded, kwargs), other_out, atol=1e-6, rtol=0)
    loaded.delete_adapter("other")
    assert list(loaded.prompt_encoder) == ["default"] and list(loaded.peft_config) == ["default"]
    torch.testing.assert_close(_out(loaded, kwargs), first_out, atol=1e-6, rtol=0)


def test_a_checkpoint_of_another_shape_is_refused(tmp_path):
    _, sm = pair("llama", "prompt")
    sm.save_pretrained(tmp_path)
    state = copy.deepcopy(surgery.get_peft_model_state_dict(sm))
    state["prompt_embeddings"] = torch.zeros(P + 1, state["prompt_embeddings"].shape[1])
    with pytest.raises(surgery.SurgeryError, match="prompt_embeddings"):
        surgery.set_peft_model_state_dict(sm, state)
