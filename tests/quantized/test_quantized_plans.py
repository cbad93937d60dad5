"""Plans on quantized bases: formats and block sizes per row, the memory to fit, and `surgery plan --quantize`
on the meta device, with counts equal to those of a model transformers loads quantized."""
from __future__ import annotations

import json

import pytest
import torch

import surgery
from surgery.cli.main import main
from surgery.plan.memory import memory_figures
from tests.support.quantized_models import quantized


def test_rows_show_the_format_and_the_memory_adds_up():
    model = quantized("nf4")
    plan = surgery.plan(model, surgery.LoraConfig(r=8, target_modules="all-linear"))
    assert {r.base_format for r in plan.rewrites} == {"nf4, block 64"}
    assert {r.base_shape for r in plan.rewrites if r.path.endswith("down_proj")} == {(64, 128)}
    # packed codes + block scales + every other tensor, as stored (the code table and the serialised state
    # bitsandbytes adds to a state dict are not memory the model holds per weight)
    state = model.state_dict()
    stored = sum(t.numel() * t.element_size() for k, t in state.items() if "quant_map" not in k and "quant_state" not in k)
    stored += sum(b.numel() * b.element_size() for k, b in model.named_buffers() if k not in state)   # rotary tables
    assert plan.memory["base_bytes"] == stored
    assert plan.memory["adapter_bytes"] == 4 * plan.added_params
    assert plan.memory["total_bytes"] == plan.memory["base_bytes"] + 4 * plan.memory["adapter_bytes"]
    text = plan.table()
    assert "Linear4bit (nf4, block 64)" in text and "quantized base: 14 x bnb-4bit (nf4, block 64)" in text
    assert "to fit" in text


def test_plain_models_have_no_memory_entry():
    from tests.support import tiny_models as tm
    assert memory_figures(tm.tiny_llama(), 10) == {}
    assert surgery.plan(tm.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"])).memory == {}


def test_a_plan_survives_json():
    plan = surgery.plan(quantized("int8"), surgery.LoraConfig(target_modules=["q_proj"]))
    again = surgery.Plan.from_json(plan.to_json())
    assert again.memory == plan.memory and again.rewrites == plan.rewrites
    assert again.rewrites[0].base_format == "int8, row scales"


@pytest.mark.parametrize("kind, label", [("nf4", "nf4, block 64"), ("nf4-dq", "nf4, block 64, double quant"),
                                         ("fp4", "fp4, block 64"), ("int8", "int8, row scales")])
def test_plan_quantize_on_the_meta_device(capsys, kind, label):
    assert main(["plan", "llama-2-7b", "--config", "lora-qv", "--quantize", kind, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["base_format"] for r in data["rewrites"]} == {label}
    assert data["totals"]["all_params"] == 6_742_609_920   # PEFT's count of the model loaded quantized
    gib = data["memory"]["base_bytes"] / 2 ** 30
    assert (3.3 < gib < 4.0) if kind != "int8" else (6.2 < gib < 6.8)   # 6.5B linear values at 4 / 8 bits


def test_plan_quantize_counts_equal_a_loaded_quantized_model(capsys, tmp_path):
    """The meta plan of the tiny model equals the plan of the same model loaded quantized by transformers."""
    from tests.support import quantized_models as qm
    path = qm._saved("llama", torch.float32, **qm.SIZES["llama"])
    assert main(["plan", path, "--config", "lora-qv", "--quantize", "nf4", "--format", "json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    loaded = surgery.plan(quantized("nf4"), surgery.load_config("lora-qv"))
    assert meta["totals"] == loaded.to_dict()["totals"]
    assert meta["memory"]["quantized_layers"] == loaded.memory["quantized_layers"]
    assert loaded.memory["base_bytes"] == meta["memory"]["base_bytes"]


def test_quantize_without_bitsandbytes_says_what_to_install(capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)   # import bitsandbytes -> ImportError
    assert main(["plan", "llama-2-7b", "--config", "lora-qv", "--quantize", "nf4"]) == 2
    err = capsys.readouterr().err
    assert "needs bitsandbytes" in err and "pip install 'surgery[bnb]'" in err
