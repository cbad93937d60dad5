"""`surgery demo`, shortened as CI runs it: pretrained MiniLM + LoRA, accuracy well above chance, a small adapter
that reloads into a fresh base with equal predictions, a merged full model that transformers loads alone."""
import os

import torch
from safetensors.torch import load_file

from surgery.cli.main import main
from surgery.demo import dataset



def test_the_committed_data_is_what_the_generator_makes():
    rows = dataset.generate()
    lines = dataset.DATA_FILE.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "split\tlabel\ttext"
    assert lines[1:] == [f"{s}\t{label}\t{t}" for s, label, t in rows]
    train, test = dataset.load("train"), dataset.load("test")
    assert len(train[0]) == 480 and len(test[0]) == 160 and sum(train[1]) == 240 and sum(test[1]) == 80
    assert not set(train[0]) & set(test[0])
    held_out = [a for words in (dataset.POSITIVE, dataset.NEGATIVE) for i, a in enumerate(words) if i % 3 == 2]
    assert not any(f" {a}" in text for text in train[0] for a in held_out)


def test_demo_end_to_end_quick(tmp_path):
    from surgery.demo.run import QUICK_STEPS, run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    lines = []
    try:
        result = run(str(tmp_path), max_steps=QUICK_STEPS, echo=lines.append)
    finally:
        torch.set_num_threads(threads)
    report = "\n".join(lines)
    assert "plan for adapter 'default'" in report and "trainable params: 74,498" in report
    assert result["accuracy_before"] <= 0.7 and result["accuracy_after"] >= 0.9  # chance is 0.5
    adapter = tmp_path / "adapter"
    assert sorted(os.listdir(adapter)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert 100_000 < result["adapter_bytes"] < 1_000_000  # a few hundred KB; the model is 87 MB
    assert len(load_file(str(adapter / "adapter_model.safetensors"))) == 26  # 12 x (A, B) + classifier w, b
    assert result["reload_same_predictions"] and result["reload_max_diff"] <= 1e-5
    merged = tmp_path / "merged"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(merged))
    assert not any("lora" in k or "base_layer" in k for k in load_file(str(merged / "model.safetensors")))
    assert result["merged_max_diff"] <= 1e-4
    assert f"accuracy {result['accuracy_before']:.1%} -> {result['accuracy_after']:.1%}" in report


def test_cli_demo_passes_its_options(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("surgery.demo.run.run", lambda out, **kw: calls.append((out, kw)) or {})
    assert main(["demo", "--quick", "--out", str(tmp_path), "--lr", "0.001"]) == 0
    assert calls == [(str(tmp_path), {"model_dir": None, "epochs": 3, "max_steps": 30, "lr": 0.001, "seed": 0,
                                      "echo": print})]
    calls.clear()
    assert main(["demo", "--steps", "7", "--out", str(tmp_path)]) == 0
    assert calls[0][1]["max_steps"] == 7
