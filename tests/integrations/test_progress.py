"""Progress bars for long operations (stderr, tqdm), silenced by --quiet or SURGERY_QUIET=1; library code
never prints (except print_trainable_parameters)."""
import ast
import os
from pathlib import Path

import pytest
import torch

import surgery
from tests.support import tiny_models
from surgery.cli.main import main


def _saved_llama(tmp_path, **overrides):
    base = tiny_models.tiny_llama(**overrides)
    base.save_pretrained(tmp_path / "base")
    model = surgery.get_peft_model(base, surgery.LoraConfig(target_modules="all-linear", r=2,
                                                           task_type="CAUSAL_LM", init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    return model


@pytest.mark.parametrize("quiet", [False, True])
def test_surgery_merge_shows_progress_unless_quiet(tmp_path, capsys, monkeypatch, quiet):
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv("SURGERY_QUIET", raising=False)
    hf_logging.enable_progress_bar()  # transformers' default
    _saved_llama(tmp_path)
    argv = ["merge", str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "merged")]
    assert main((["--quiet"] if quiet else []) + argv) == 0
    err = capsys.readouterr().err
    shown = [needle in err for needle in ("surgery merge", "merging", "Loading weights")]
    assert shown == ([False] * 3 if quiet else [True] * 3), err
    assert "SURGERY_QUIET" not in os.environ and hf_logging.is_progress_bar_enabled()  # --quiet: the command only


@pytest.mark.parametrize("quiet", ["", "1"])
def test_loading_a_large_adapter_shows_progress_unless_quiet(tmp_path, capsys, monkeypatch, quiet):
    monkeypatch.setenv("SURGERY_QUIET", quiet)
    model = _saved_llama(tmp_path, num_hidden_layers=20)  # 20 x 7 modules x (A, B) = 280 tensors
    capsys.readouterr()
    loaded = surgery.PeftModel.from_pretrained(tiny_models.tiny_llama(num_hidden_layers=20), str(tmp_path / "adapter"))
    err = capsys.readouterr().err
    assert ("loading adapter default" in err) == (quiet == ""), err
    x = tiny_models.token_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model.eval()(x).logits)


def test_small_loads_and_merges_stay_silent(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SURGERY_QUIET", raising=False)
    model = _saved_llama(tmp_path)
    capsys.readouterr()
    surgery.PeftModel.from_pretrained(tiny_models.tiny_llama(), str(tmp_path / "adapter")).merge_and_unload()
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    del model


def test_library_code_never_prints():
    """print() only in the CLI (its output), and in print_trainable_parameters (PEFT's API)."""
    root = Path(surgery.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.parts[-2] == "cli" or path.name == "dataset.py" and path.parts[-2] == "demo":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert len(offenders) == 1 and offenders[0].startswith("facade/peft_model.py:"), offenders
