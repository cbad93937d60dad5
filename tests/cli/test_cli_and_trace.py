"""The `surgery` command (exit codes, output) and the optional call-order trace."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.support import tiny_models
from surgery.cli.main import main
from surgery.graph.trace import in_call_order, trace_call_order
from surgery.graph.walk import module_graph


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_llama2_7b_prints_peft_totals_line(capsys):
    code, out, err = run(capsys, "plan", "llama-2-7b", "--config", "lora-qv")
    assert code == 0
    assert out.strip().endswith("trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622")
    assert out.count("self_attn.q_proj") == 32 and out.count("self_attn.v_proj") == 32


def test_plan_json_and_markdown(capsys):
    code, out, _ = run(capsys, "plan", "gpt2", "--config", "lora-all-linear", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert len(data["rewrites"]) == 48 and all(r["base_type"] == "Conv1D" for r in data["rewrites"])
    assert "lm_head" not in {r["path"] for r in data["rewrites"]}
    code, out, _ = run(capsys, "plan", "gpt2", "--config", "lora-all-linear", "--format", "markdown")
    assert code == 0 and "| module" in out


def test_plan_from_config_file_and_directory(tmp_path, capsys):
    tiny_models.llama_config().save_pretrained(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("peft_type: LORA\nr: 4\ntarget_modules: [q_proj]\n")
    code, out, _ = run(capsys, "plan", str(tmp_path), "--config", str(cfg))
    assert code == 0 and "trainable params: 512 ||" in out
    code, out, _ = run(capsys, "plan", str(tmp_path / "config.json"), "--config", str(cfg))
    assert code == 0 and "layers.1.self_attn.q_proj" in out


@pytest.mark.parametrize("argv, needle", [
    (["plan", "llama2-7b"], "did you mean 'llama-2-7b'"),
    (["plan", "llama-2-7b", "--config", "lora-qvv"], "did you mean 'lora-qv'"),
    (["plan", "llama-2-7b", "--format", "xml"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_exit_2_without_traceback(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert needle in err and "Traceback" not in err


def test_bad_config_value_exits_2_naming_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("peft_type: LORA\nr: 0\ntarget_modules: [q_proj]\n")
    code, _, err = run(capsys, "plan", "llama-2-7b", "--config", str(cfg))
    assert code == 2 and "r = 0" in err
    cfg.write_text("peft_type: LORA\ntarget_modules: [q_prj]\n")
    code, _, err = run(capsys, "plan", "llama-2-7b", "--config", str(cfg))
    assert code == 2 and "q_prj" in err and "q_proj" in err


def test_console_script_runs_as_a_process():
    proc = subprocess.run([sys.executable, "-m", "surgery.cli.main", "plan", "t5-base", "--config", "lora-qv", "--task", "SEQ_2_SEQ_LM"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "matched no module" in proc.stderr and "Traceback" not in proc.stderr


def test_inspect_lists_layers_ranks_and_files(tmp_path, capsys):
    import surgery

    model = surgery.get_peft_model(tiny_models.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"], r=4))
    model.save_pretrained(tmp_path)
    code, out, _ = run(capsys, "inspect", str(tmp_path))
    assert code == 0
    assert "model.layers.0.self_attn.q_proj" in out and "adapter_model.safetensors" in out
    assert "total adapter params: 512" in out


def test_trace_orders_modules_by_first_call_on_meta():
    with torch.device("meta"):
        model = LlamaForCausalLM(tiny_models.llama_config())
    graph = trace_call_order(model, module_graph(model), torch.zeros(1, 4, dtype=torch.long, device="meta"))
    order = in_call_order(graph)
    assert order.index("model.embed_tokens") < order.index("model.layers.0.self_attn.q_proj")
    assert order.index("model.layers.0.self_attn.q_proj") < order.index("model.layers.1.self_attn.q_proj")
    assert order.index("model.layers.1.mlp.down_proj") < order.index("lm_head")


def test_merge_command_writes_a_full_model_equal_to_the_adapted_one(tmp_path, capsys):
    import surgery
    from transformers import AutoModelForCausalLM

    base = tiny_models.tiny_llama()
    base.save_pretrained(tmp_path / "base")
    model = surgery.get_peft_model(base, surgery.LoraConfig(target_modules=["q_proj", "v_proj"], r=4,
                                                           init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(tmp_path / "adapter")
    x = tiny_models.token_batch()
    with torch.no_grad():
        expected = model.eval()(x).logits
    code, _, err = run(capsys, "--quiet", "merge", str(tmp_path / "base"), str(tmp_path / "adapter"),
                       str(tmp_path / "merged"), "--safe")
    assert code == 0, err
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in k for k in merged.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, expected, atol=1e-5, rtol=0)


def test_summary_folds_each_projection_into_one_row_with_layer_ranges(capsys):
    code, out, _ = run(capsys, "plan", "llama-3-70b", "--config", "lora-all-linear", "--summary")
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.startswith("model.layers.*")]
    assert len(rows) == 7 and all(r[1] == "80" and r[2] == "0-79" for r in rows)
    total = sum(int(r[-1].replace(",", "")) for r in rows)
    assert f"trainable params: {total:,d} ||" in out


def test_summary_splits_rows_that_differ_and_compresses_ranges():
    import surgery
    from surgery.plan.table import _ranges

    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and _ranges([3]) == "3" and _ranges([]) == ""
    with torch.device("meta"):
        model = LlamaForCausalLM(tiny_models.llama_config(num_hidden_layers=4))
    cfg = surgery.LoraConfig(target_modules=["q_proj"], r=8, layers_to_transform=[0, 2, 3],
                             rank_pattern={"model.layers.3.self_attn.q_proj": 4})
    table = surgery.plan(model, cfg).table(summary=True)
    rows = [line.split() for line in table.splitlines() if line.startswith("model.layers.*")]
    assert [(r[1], r[2], r[6]) for r in rows] == [("2", "0,2", "8"), ("1", "3", "4")]


def test_summary_with_json_is_a_usage_error(capsys):
    code, _, err = run(capsys, "plan", "llama-2-7b", "--summary", "--format", "json")
    assert code == 2 and "summary" in err and "Traceback" not in err
