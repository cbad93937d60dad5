"""AutoPeftModel*: the base named by the adapter is loaded, then the adapter; checked against peft's classes."""
import json
import shutil

import peft
import pytest
import torch

import surgery
from tests.support import tiny_models
from tests.support.helpers import perturb_adapters
from tests.support.prompt_cases import word_tokenizer  # noqa: F401  (fixture)


def _saved_base(tmp_path, model, name="base"):
    path = tmp_path / name
    model.save_pretrained(path)
    return path


def _adapter(tmp_path, base_path, base_cls, task_type="CAUSAL_LM", name="adapter", **config):
    base = base_cls.from_pretrained(base_path)
    model = surgery.get_peft_model(base, surgery.LoraConfig(task_type=task_type, r=4, **config))
    perturb_adapters(model, seed=3)
    out = tmp_path / name
    model.save_pretrained(out)
    return model.eval(), out


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_causal_lm_loads_base_then_adapter_as_peft_does(tmp_path):
    from transformers import LlamaForCausalLM

    base = _saved_base(tmp_path, tiny_models.tiny_llama())
    trained, out = _adapter(tmp_path, base, LlamaForCausalLM, target_modules=["q_proj", "v_proj"])
    ours = surgery.AutoPeftModelForCausalLM.from_pretrained(out)
    theirs = peft.AutoPeftModelForCausalLM.from_pretrained(out)
    assert type(ours).__name__ == type(theirs).__name__ == "PeftModelForCausalLM"
    assert isinstance(ours, surgery.PeftModelForCausalLM) and not ours.training
    assert not any(p.requires_grad for p in ours.parameters())
    ids = tiny_models.token_batch()
    torch.testing.assert_close(_logits(ours, ids), _logits(theirs, ids), atol=0, rtol=0)
    torch.testing.assert_close(_logits(ours, ids), _logits(trained, ids), atol=0, rtol=0)
    trainable = surgery.AutoPeftModelForCausalLM.from_pretrained(out, is_trainable=True)
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} == \
        {n for n, p in trained.named_parameters() if "lora_" in n}


def test_sequence_classification_keeps_the_trained_head(tmp_path):
    from transformers import BertForSequenceClassification

    base = _saved_base(tmp_path, tiny_models.tiny_bert_seq_cls())
    trained, out = _adapter(tmp_path, base, BertForSequenceClassification, task_type="SEQ_CLS",
                            target_modules=["query", "value"])
    with torch.no_grad():
        trained.base_model.model.classifier.modules_to_save["default"].weight.add_(0.5)
    trained.save_pretrained(out)
    ours = surgery.AutoPeftModelForSequenceClassification.from_pretrained(out)
    theirs = peft.AutoPeftModelForSequenceClassification.from_pretrained(out)
    ids = tiny_models.token_batch(vocab=64)
    torch.testing.assert_close(_logits(ours, ids), _logits(theirs, ids), atol=1e-6, rtol=0)
    torch.testing.assert_close(_logits(ours, ids), _logits(trained, ids), atol=1e-6, rtol=0)


@pytest.mark.parametrize("saver", ["surgery", "peft"])
def test_auto_peft_model_uses_the_recorded_base_class(tmp_path, saver):
    from transformers import LlamaForCausalLM

    base_path = _saved_base(tmp_path, tiny_models.tiny_llama())
    lib = surgery if saver == "surgery" else peft
    model = lib.get_peft_model(LlamaForCausalLM.from_pretrained(base_path),
                               lib.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["auto_mapping"] == {"base_model_class": "LlamaForCausalLM",
                                     "parent_library": "transformers.models.llama.modeling_llama"}
    ours = surgery.AutoPeftModel.from_pretrained(tmp_path / "adapter")
    theirs = peft.AutoPeftModel.from_pretrained(tmp_path / "adapter")
    assert type(ours).__name__ == "PeftModel" and type(ours.get_base_model()) is LlamaForCausalLM
    ids = tiny_models.token_batch()
    torch.testing.assert_close(_logits(ours, ids), _logits(theirs, ids), atol=0, rtol=0)


def test_wrong_class_and_unsafe_mapping_are_refused_before_any_import(tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    base = _saved_base(tmp_path, tiny_models.tiny_llama())
    _, out = _adapter(tmp_path, base, LlamaForCausalLM, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="Cannot use `AutoPeftModel` with a task type.*AutoPeftModelForCausalLM"):
        surgery.AutoPeftModel.from_pretrained(out)
    with pytest.raises(ValueError, match="Expected target PEFT class: PeftModelForCausalLM, but you have asked for: "
                                         "PeftModelForSeq2SeqLM"):
        surgery.AutoPeftModelForSeq2SeqLM.from_pretrained(out)
    with pytest.raises(EnvironmentError, match="from_pretrained"):
        surgery.AutoPeftModelForCausalLM()
    config = json.loads((out / "adapter_config.json").read_text())
    config.update(task_type=None, auto_mapping={"base_model_class": "Evil", "parent_library": "evil_package"})
    (out / "adapter_config.json").write_text(json.dumps(config))
    imported = []
    monkeypatch.setattr("importlib.import_module", lambda name, *a: imported.append(name))
    with pytest.raises(ValueError, match="'evil_package' which is not in the import allowlist.*"
                                         r"import_allowlist=\['evil_package'\]"):
        surgery.AutoPeftModel.from_pretrained(out)
    assert imported == []
    config["auto_mapping"] = None
    (out / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Cannot infer the auto class"):
        surgery.AutoPeftModel.from_pretrained(out)


def test_tokenizer_saved_with_the_adapter_resizes_the_base(tmp_path, word_tokenizer):
    from transformers import AutoTokenizer, LlamaForCausalLM

    base = _saved_base(tmp_path, tiny_models.tiny_llama(vocab_size=7))
    tokenizer = AutoTokenizer.from_pretrained(word_tokenizer)
    tokenizer.add_tokens(["new1", "new2", "new3"])
    model = LlamaForCausalLM.from_pretrained(base)
    model.resize_token_embeddings(len(tokenizer))
    peft_model = surgery.get_peft_model(model, surgery.LoraConfig(task_type="CAUSAL_LM", r=4,
                                                                   target_modules=["q_proj", "embed_tokens"]))
    perturb_adapters(peft_model, seed=5)
    out = tmp_path / "adapter"
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    ours = surgery.AutoPeftModelForCausalLM.from_pretrained(out)
    theirs = peft.AutoPeftModelForCausalLM.from_pretrained(out)
    assert ours.get_input_embeddings().weight.shape[0] == len(tokenizer) == 10
    ids = torch.tensor([[1, 2, 7, 8, 9]])
    torch.testing.assert_close(_logits(ours, ids), _logits(theirs, ids), atol=0, rtol=0)
    torch.testing.assert_close(_logits(ours, ids), _logits(peft_model.eval(), ids), atol=0, rtol=0)


def _hub_snapshot(cache, repo, source, commit):
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(source, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    return root


def test_base_and_adapter_from_the_offline_hub_cache_with_revisions(tmp_path, monkeypatch):
    """Both ids resolve in a local cache laid out as the Hub's (HF_HUB_OFFLINE); the adapter's recorded base
    revision picks the base snapshot."""
    import huggingface_hub.constants as hub_constants
    from transformers import LlamaForCausalLM

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hub"
    base_a, base_b = _saved_base(tmp_path, tiny_models.tiny_llama(seed=1), "a"), \
        _saved_base(tmp_path, tiny_models.tiny_llama(seed=2), "b")
    root = _hub_snapshot(cache, "org/base", base_a, "1" * 40)
    shutil.copytree(base_b, root / "snapshots" / ("2" * 40))
    (root / "refs" / "main").write_text("1" * 40)
    (root / "refs" / "v2").write_text("2" * 40)
    trained = surgery.get_peft_model(LlamaForCausalLM.from_pretrained(base_b), surgery.LoraConfig(
        task_type="CAUSAL_LM", r=4, target_modules=["q_proj"]))
    perturb_adapters(trained, seed=9)
    trained.peft_config["default"].base_model_name_or_path = "org/base"
    trained.peft_config["default"].revision = "v2"
    trained.save_pretrained(tmp_path / "adapter")
    adapter_root = _hub_snapshot(cache, "org/adapter", tmp_path / "adapter", "3" * 40)
    (adapter_root / "refs" / "main").write_text("3" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    ours = surgery.AutoPeftModelForCausalLM.from_pretrained("org/adapter", cache_dir=str(cache))
    ids = tiny_models.token_batch()
    torch.testing.assert_close(_logits(ours, ids), _logits(trained.eval(), ids), atol=0, rtol=0)
