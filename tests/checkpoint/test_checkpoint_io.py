"""Checkpoint I/O: Hub ids from an offline cache, subfolders, safe .bin reading, checks, atomic saves."""
import json
import os
import shutil

import pytest
import torch

import surgery
from tests.support import tiny_models
from tests.support.helpers import write_pickle_payload
from surgery.errors import CheckpointError, SurgeryError


def _saved(tmp_path, **kwargs):
    model = surgery.get_peft_model(tiny_models.tiny_llama(), surgery.LoraConfig(
        target_modules=["q_proj", "v_proj"], r=4, init_lora_weights=False, **kwargs))
    out = tmp_path / "adapter"
    model.save_pretrained(out)
    return model.eval(), out


def _hub_cache(tmp_path, adapter_dir, repo="someone/tiny-lora", subfolder=None):
    cache = tmp_path / "hub"
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("a" * 40)
    target = snapshot / subfolder if subfolder else snapshot
    shutil.copytree(adapter_dir, target)
    (cache / f"models--{repo.replace('/', '--')}" / "refs").mkdir(parents=True)
    (cache / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("a" * 40)
    return cache


@pytest.mark.parametrize("subfolder", [None, "adapters/v1"])
def test_from_pretrained_hub_id_from_offline_cache(tmp_path, subfolder, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    model, out = _saved(tmp_path)
    cache = _hub_cache(tmp_path, out, subfolder=subfolder)
    x = tiny_models.token_batch()
    loaded = surgery.PeftModel.from_pretrained(tiny_models.tiny_llama(), "someone/tiny-lora",
                                               cache_dir=str(cache), subfolder=subfolder)
    assert type(loaded).__name__ == "PeftModel"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, atol=0, rtol=0)


@pytest.mark.parametrize("subfolder", ["../escape", "/etc", "a/../../b"])
def test_subfolder_cannot_escape(tmp_path, subfolder):
    _, out = _saved(tmp_path)
    with pytest.raises(CheckpointError, match="subfolder"):
        surgery.PeftModel.from_pretrained(tiny_models.tiny_llama(), str(out), subfolder=subfolder)


def test_bin_pickle_payload_is_never_executed(tmp_path):
    _, out = _saved(tmp_path)
    os.remove(out / "adapter_model.safetensors")
    marker = tmp_path / "pwned"
    write_pickle_payload(out / "adapter_model.bin", marker)
    with pytest.raises(CheckpointError, match="weights_only"):
        surgery.PeftModel.from_pretrained(tiny_models.tiny_llama(), str(out))
    assert not marker.exists()


def test_bin_written_by_torch_save_loads(tmp_path):
    model, out = _saved(tmp_path)
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "adapter_model.bin").is_file()
    loaded = surgery.PeftModel.from_pretrained(tiny_models.tiny_llama(), str(tmp_path / "bin"))
    x = tiny_models.token_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, atol=0, rtol=0)


def test_wrong_base_is_refused_naming_module_and_shapes(tmp_path):
    _, out = _saved(tmp_path)
    other = tiny_models.tiny_llama(hidden_size=48, intermediate_size=64)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"q_proj.*\(4, 32\).*\(4, 48\)"):
        surgery.PeftModel.from_pretrained(other, str(out))
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_truncated_safetensors_and_bad_config(tmp_path):
    _, out = _saved(tmp_path)
    data = (out / "adapter_model.safetensors").read_bytes()
    (out / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        surgery.PeftModel.from_pretrained(tiny_models.tiny_llama(), str(out))
    (out / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        surgery.PeftModel.from_pretrained(tiny_models.tiny_llama(), str(out))
    (out / "adapter_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        surgery.PeftModel.from_pretrained(tiny_models.tiny_llama(), str(out))


def test_failed_save_keeps_previous_adapter(tmp_path, monkeypatch):
    model, out = _saved(tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("surgery.checkpoint.io.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_selected_adapters_and_names_are_checked(tmp_path):
    model, _ = _saved(tmp_path)
    with pytest.raises(SurgeryError, match="not an adapter"):
        model.save_pretrained(tmp_path / "x", selected_adapters=["nope"])
    for bad in ["../evil", "/abs", "", "a/b", "base_layer"]:
        with pytest.raises(SurgeryError, match="adapter_name"):
            model.add_adapter(bad, surgery.LoraConfig(target_modules=["q_proj"]))


def test_model_card_keeps_existing_text(tmp_path):
    model, out = _saved(tmp_path)
    (out / "README.md").write_text("---\nlicense: mit\n---\n# My adapter\n\nHand-written notes.\n")
    model.save_pretrained(out)
    text = (out / "README.md").read_text()
    assert "Hand-written notes." in text and "license: mit" in text and "library_name: peft" in text


def test_saved_config_is_peft_loadable_json(tmp_path):
    _, out = _saved(tmp_path)
    data = json.loads((out / "adapter_config.json").read_text())
    assert data["peft_type"] == "LORA" and data["inference_mode"] is True
    assert sorted(data) == list(data)  # sorted keys, as PEFT writes
    assert "target_types" not in data and "runtime_config" not in data
    assert not list(out.glob(".*tmp"))  # no temporary files left behind
