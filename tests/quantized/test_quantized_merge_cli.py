"""`surgery merge --quantize nf4 [--dequantize]`: a QLoRA adapter merged from the command line."""
from __future__ import annotations

import warnings

import torch
from transformers import AutoModelForCausalLM

import surgery
from surgery.cli.main import main
from surgery.quantized import backend_of
from tests.support import quantized_models as qm
from tests.support import tiny_models as tm


def _adapter(tmp_path):
    torch.manual_seed(0)
    model = surgery.get_peft_model(qm.quantized("nf4"), surgery.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                         task_type="CAUSAL_LM",
                                                                         init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    model.eval()
    for module in model.modules():   # bitsandbytes' exact (training) path: see test_qlora_parity
        if backend_of(module) is not None:
            module.train()
    return model(input_ids=tm.token_batch()).logits.detach()


def test_merge_dequantize_writes_a_full_precision_model_equal_to_the_adapted_one(tmp_path):
    expected = _adapter(tmp_path)
    base = qm._saved("llama", torch.float32, **qm.SIZES["llama"])
    assert main(["--quiet", "merge", base, str(tmp_path / "adapter"), str(tmp_path / "out"), "--quantize", "nf4",
                 "--dequantize"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert getattr(merged.config, "quantization_config", None) is None
    assert not any(backend_of(m) for m in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=tm.token_batch()).logits, expected, atol=1e-4, rtol=0)


def test_merge_into_the_quantized_base_warns_with_the_rounding(tmp_path, recwarn):
    _adapter(tmp_path)
    base = qm._saved("llama", torch.float32, **qm.SIZES["llama"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["--quiet", "merge", base, str(tmp_path / "adapter"), str(tmp_path / "out"),
                     "--quantize", "nf4"]) == 0
    assert any("quantized base layer" in str(w.message) and "max abs error" in str(w.message) for w in caught)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out", device_map="cpu")
    assert sum(1 for m in merged.modules() if backend_of(m) is not None) == 14   # saved as 4-bit, loads as 4-bit
