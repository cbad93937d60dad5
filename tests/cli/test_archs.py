"""surgery.archs: bundled configs, source resolution and meta-device model building."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from surgery.archs import (
    ModelSourceError,
    build_meta_model,
    bundled_config_dict,
    bundled_names,
    load_model_for_planning,
    resolve_config,
)

# name -> (task, model class, parameter count); counts are the well-known ones of the real checkpoints
# (tied parameters counted once, as PEFT's print_trainable_parameters does).
EXPECTED = {
    "llama-2-7b": (None, "LlamaForCausalLM", 6_738_415_616),
    "llama-3-8b": (None, "LlamaForCausalLM", 8_030_261_248),
    "llama-3-70b": (None, "LlamaForCausalLM", 70_553_706_496),
    "mistral-7b": (None, "MistralForCausalLM", 7_241_732_096),
    "qwen2.5-7b": (None, "Qwen2ForCausalLM", 7_615_616_512),
    "gpt2": (None, "GPT2LMHeadModel", 124_439_808),
    "gpt2-large": (None, "GPT2LMHeadModel", 774_030_080),
    "bert-base-cased": ("FEATURE_EXTRACTION", "BertModel", 108_310_272),
    "roberta-base": ("FEATURE_EXTRACTION", "RobertaModel", 124_645_632),
    "t5-base": (None, "T5ForConditionalGeneration", 222_903_552),
    "vit-base-patch16-224": (None, "ViTForImageClassification", 86_567_656),
    "whisper-tiny": (None, "WhisperForConditionalGeneration", 37_760_640),
    "stable-diffusion-v1-5-unet": (None, "UNet2DConditionModel", 859_520_964),
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def offline(monkeypatch):
    """Force huggingface_hub offline: it reads HF_HUB_OFFLINE at import, so patch the constant too."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


def test_bundled_names_are_exactly_the_documented_set():
    assert bundled_names() == sorted(EXPECTED)
    for name in bundled_names():
        d = bundled_config_dict(name)
        # a transformers config names its type and classes; a diffusers component its class
        assert d["_name_or_path"] and (d.get("_class_name") or (d["model_type"] and d["architectures"])), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_builds_on_meta_with_real_parameter_count(name):
    task, cls_name, count = EXPECTED[name]
    config = resolve_config(name)
    assert config.name_or_path == bundled_config_dict(name)["_name_or_path"]
    model = build_meta_model(config, task)
    assert type(model).__name__ == cls_name
    assert n_params(model) == count
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("name, cls_name, count", [
    ("bert-base-cased", "BertForMaskedLM", 108_340_804),
    ("roberta-base", "RobertaForMaskedLM", 124_697_433),
])
def test_architectures_field_picks_the_class_without_task(name, cls_name, count):
    model = load_model_for_planning(name)
    assert type(model).__name__ == cls_name
    assert n_params(model) == count


def test_explicit_task_decides_the_class():
    model = load_model_for_planning("bert-base-cased", task="QUESTION_ANS")
    assert type(model).__name__ == "BertForQuestionAnswering"
    assert type(load_model_for_planning("bert-base-cased", task="seq_cls")).__name__ == "BertForSequenceClassification"
    assert type(load_model_for_planning("gpt2", task="FEATURE_EXTRACTION")).__name__ == "GPT2Model"


def test_peft_task_type_enum_is_accepted():
    peft = pytest.importorskip("peft")
    model = load_model_for_planning("roberta-base", task=peft.TaskType.TOKEN_CLS)
    assert type(model).__name__ == "RobertaForTokenClassification"


def test_bad_task_is_refused():
    config = resolve_config("gpt2")
    with pytest.raises(ModelSourceError, match="unknown task"):
        build_meta_model(config, task="CAUSAL")
    with pytest.raises(ModelSourceError, match="AutoModelForSeq2SeqLM"):
        build_meta_model(resolve_config("llama-2-7b"), task="SEQ_2_SEQ_LM")


def test_bundled_name_is_case_insensitive():
    assert resolve_config("Llama-2-7B").model_type == "llama"


def test_llama_3_70b_builds_fast():
    config = resolve_config("llama-3-70b")
    start = time.perf_counter()
    model = build_meta_model(config)
    elapsed = time.perf_counter() - start
    assert n_params(model) == 70_553_706_496
    assert elapsed < 5.0, f"70B meta build took {elapsed:.2f}s"


def _write_config(directory: Path, name: str = "gpt2", **overrides) -> Path:
    d = bundled_config_dict(name)
    d.pop("_name_or_path")
    d.update(overrides)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(d))
    return path


def test_resolve_from_local_directory(tmp_path):
    _write_config(tmp_path / "my-gpt2", n_layer=2)
    config = resolve_config(str(tmp_path / "my-gpt2"))
    assert config.model_type == "gpt2" and config.n_layer == 2
    model = load_model_for_planning(tmp_path / "my-gpt2")  # PathLike is accepted too
    assert type(model).__name__ == "GPT2LMHeadModel" and len(model.transformer.h) == 2


def test_resolve_from_config_json_path(tmp_path):
    path = _write_config(tmp_path / "m", name="llama-2-7b", num_hidden_layers=1)
    config = resolve_config(str(path))
    assert config.model_type == "llama" and config.num_hidden_layers == 1
    other = tmp_path / "llama-variant.json"
    other.write_text(path.read_text())
    assert resolve_config(str(other)).num_hidden_layers == 1


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_config(str(tmp_path))


def test_remote_code_is_never_executed(tmp_path):
    _write_config(tmp_path / "custom", model_type="my_secret_arch",
                  auto_map={"AutoConfig": "configuration_x.XConfig"})
    with pytest.raises(ModelSourceError, match="remote code"):
        resolve_config(str(tmp_path / "custom"))
    with pytest.raises(ModelSourceError, match="remote code"):
        resolve_config(str(tmp_path / "custom" / "config.json"))


def _fake_hub_cache(root: Path, repo_id: str, commit: str = "a" * 40, **overrides) -> Path:
    repo_dir = root / ("models--" + repo_id.replace("/", "--"))
    _write_config(repo_dir / "snapshots" / commit, **overrides)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return root


def test_resolve_hub_id_from_offline_cache(tmp_path, offline):
    cache = _fake_hub_cache(tmp_path / "hub", "someorg/tiny-gpt2", n_layer=3, n_embd=64, n_head=4)
    config = resolve_config("someorg/tiny-gpt2", cache_dir=cache)
    assert config.model_type == "gpt2" and config.n_layer == 3
    assert config.name_or_path == "someorg/tiny-gpt2"
    assert resolve_config("someorg/tiny-gpt2", revision="a" * 40, cache_dir=cache).n_layer == 3
    model = load_model_for_planning("someorg/tiny-gpt2", cache_dir=cache)
    assert len(model.transformer.h) == 3


def test_resolve_hub_id_uses_patched_default_cache(tmp_path, offline, monkeypatch):
    import huggingface_hub.constants as hf_constants

    cache = _fake_hub_cache(tmp_path / "hub", "someorg/tiny-gpt2", n_layer=5)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    assert resolve_config("someorg/tiny-gpt2").n_layer == 5


def test_bundled_hub_id_falls_back_to_bundled_config_when_not_cached(tmp_path, offline):
    config = resolve_config("meta-llama/Llama-2-7b-hf", cache_dir=tmp_path)
    assert config.num_hidden_layers == 32 and config.name_or_path == "meta-llama/Llama-2-7b-hf"
    with pytest.raises(ModelSourceError):  # a pinned revision is never silently replaced
        resolve_config("meta-llama/Llama-2-7b-hf", revision="b" * 40, cache_dir=tmp_path)


def test_unknown_name_suggests_closest_bundled(tmp_path, offline):
    with pytest.raises(ModelSourceError) as info:
        resolve_config("llama2-7b", cache_dir=tmp_path)
    msg = str(info.value)
    assert "unknown model 'llama2-7b'" in msg
    assert "did you mean 'llama-2-7b'?" in msg
    assert "Bundled: " in msg and "t5-base" in msg
    assert isinstance(info.value, ValueError)


def test_missing_path_is_reported(tmp_path, offline):
    with pytest.raises(ModelSourceError, match="no such file or directory"):
        resolve_config(str(tmp_path / "nope" / "config.json"))
    with pytest.raises(ModelSourceError, match="non-empty"):
        resolve_config("  ")
