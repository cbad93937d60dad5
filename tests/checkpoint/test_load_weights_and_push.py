"""load_peft_weights (vs peft's), push_to_hub through huggingface_hub against a local recording endpoint."""
import json
import shutil

import peft
import pytest
import torch
from safetensors.torch import load as load_safetensors_bytes

import surgery
from surgery.errors import CheckpointError
from tests.support import tiny_models
from tests.support.fake_hub import FakeHub
from tests.support.helpers import perturb_adapters, write_pickle_payload


def _saved(tmp_path, name="adapter", **save):
    model = surgery.get_peft_model(tiny_models.tiny_llama(), surgery.LoraConfig(r=4, target_modules=["q_proj"]))
    perturb_adapters(model, seed=2)
    out = tmp_path / name
    model.save_pretrained(out, **save)
    return model, out


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


@pytest.mark.parametrize("safe", [True, False])
def test_load_peft_weights_matches_peft(tmp_path, safe):
    _, out = _saved(tmp_path, safe_serialization=safe)
    ours = surgery.load_peft_weights(str(out), device="cpu")
    _same(ours, peft.load_peft_weights(str(out), device="cpu"))
    assert all(k.startswith("base_model.model.") and ".default." not in k for k in ours)
    mapping = {r"model\.layers\.(\d+)\.self_attn": r"decoder.block.\1.attn"}
    _same(surgery.load_peft_weights(str(out), device="cpu", key_mapping=mapping),
          peft.load_peft_weights(str(out), device="cpu", key_mapping=mapping))
    assert any(".decoder.block.0.attn." in k for k in surgery.load_peft_weights(str(out), "cpu", mapping))


def test_load_peft_weights_subfolder_hub_cache_and_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    model, out = _saved(tmp_path)
    model.save_pretrained(tmp_path / "root" / "sub")
    _same(surgery.load_peft_weights(str(tmp_path / "root"), device="cpu", subfolder="sub"),
          peft.load_peft_weights(str(tmp_path / "root"), device="cpu", subfolder="sub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hub"
    repo = cache / "models--org--adapter"
    shutil.copytree(out, repo / "snapshots" / ("b" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    _same(surgery.load_peft_weights("org/adapter", device="cpu", cache_dir=str(cache)),
          surgery.load_peft_weights(str(out), device="cpu"))
    with pytest.raises(CheckpointError, match="Can't find weights for org/missing"):
        surgery.load_peft_weights("org/missing", device="cpu", cache_dir=str(cache))
    with pytest.raises(CheckpointError, match="subfolder"):
        surgery.load_peft_weights(str(tmp_path / "root"), device="cpu", subfolder="../root")
    with pytest.raises(CheckpointError, match="prefix"):
        (tmp_path / "bare").mkdir()
        from safetensors.torch import save_file
        save_file({"lora_A.weight": torch.zeros(2)}, str(tmp_path / "bare" / "adapter_model.safetensors"))
        surgery.load_peft_weights(str(tmp_path / "bare"), device="cpu", key_mapping={"a": "b"})


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants as hub_constants

    server = FakeHub()
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    yield server
    server.close()


def test_push_to_hub_uploads_exactly_the_saved_adapter(tmp_path, hub):
    model, out = _saved(tmp_path)
    info = model.push_to_hub("me/tiny-lora", private=True, commit_message="first", tags=["my-tag"])
    assert info.oid == "a" * 40
    assert hub.creates == [{"name": "tiny-lora", "organization": "me", "visibility": "private"}]
    (commit,) = hub.commits
    assert commit["repo"] == "me/tiny-lora" and commit["header"]["summary"] == "first"
    files = commit["files"]
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]   # no base weights
    assert json.loads(files["adapter_config.json"]) == json.loads((out / "adapter_config.json").read_text())
    uploaded = load_safetensors_bytes(files["adapter_model.safetensors"])
    _same(uploaded, surgery.load_peft_weights(str(out), device="cpu"))
    card = files["README.md"].decode()
    assert "library_name: peft" in card and "- my-tag" in card
    # PEFT loads what was pushed, with the same outputs
    folder = tmp_path / "pushed"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    theirs = peft.PeftModel.from_pretrained(tiny_models.tiny_llama(), str(folder))
    ids = tiny_models.token_batch()
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, model.eval()(ids).logits, atol=0, rtol=0)


def test_push_config_to_a_branch(tmp_path, hub):
    config = surgery.LoraConfig(r=6, target_modules=["q_proj"])
    config.push_to_hub("me/config-only", revision="dev")
    (commit,) = hub.commits
    assert commit["path"] == "/api/models/me/config-only/commit/dev"
    assert commit["header"]["summary"] == "Upload config"
    assert list(commit["files"]) == ["adapter_config.json"]
    assert json.loads(commit["files"]["adapter_config.json"])["r"] == 6
    # the uploaded JSON is PEFT's format:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "adapter_config.json").write_bytes(commit["files"]["adapter_config.json"])
    assert peft.PeftConfig.from_pretrained(str(tmp_path / "c")).r == 6


def test_push_to_hub_offline_is_refused_before_uploading(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    model, _ = _saved(tmp_path)
    with pytest.raises(Exception, match="(?i)offline"):
        model.push_to_hub("me/repo")


def test_hostile_files_through_the_new_loaders(tmp_path):
    """load_peft_weights, AutoPeftModel and hotswap read files with the same guarded readers: a pickle payload
    never runs, a truncated file is an error naming it."""
    import os

    _, out = _saved(tmp_path)
    os.remove(out / "adapter_model.safetensors")
    marker = tmp_path / "pwned"
    write_pickle_payload(out / "adapter_model.bin", marker)
    with pytest.raises(CheckpointError, match="weights_only"):
        surgery.load_peft_weights(str(out), device="cpu")
    model = surgery.get_peft_model(tiny_models.tiny_llama(), surgery.LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(CheckpointError, match="weights_only"):
        surgery.hotswap_adapter(model, str(out), adapter_name="default")
    assert not marker.exists()
    _, good = _saved(tmp_path, name="good")
    data = (good / "adapter_model.safetensors").read_bytes()
    (good / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        surgery.load_peft_weights(str(good), device="cpu")
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        surgery.hotswap_adapter(model, str(good), adapter_name="default")
