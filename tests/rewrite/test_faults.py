"""Faults: SIGKILL in the middle of save_pretrained, concurrent writers, failures during apply and merge.

The kill loop runs KILL_RUNS times (30 by default; SURGERY_LONG_TESTS=1 for 500, the release check).
"""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import surgery
from tests.support import tiny_models
from surgery.checkpoint.io import read_config_dict, read_tensors
from surgery.errors import MergeError, PlanError
from tests.support import subprocess_env
from tests.support.fault_saver import stamp as _stamp  # the writer process stamps versions the same way

LONG = os.environ.get("SURGERY_LONG_TESTS") == "1"
KILL_RUNS = 500 if LONG else 30


def _model():
    return surgery.get_peft_model(tiny_models.tiny_llama(), surgery.LoraConfig(
        target_modules=["q_proj", "v_proj"], r=4, init_lora_weights=False))


def _version_on_disk(directory) -> int:
    """The version of a complete adapter, or an AssertionError describing the mix."""
    config_version = read_config_dict(directory)["lora_alpha"] - 1000
    values = {float(t.flatten()[0]) for t in read_tensors(directory).values()}
    assert len(values) == 1, f"weights from several saves: {values}"
    weight_version = int(values.pop())
    assert weight_version == config_version, f"weights v{weight_version} with config v{config_version}"
    return weight_version


def test_sigkill_during_save_never_leaves_a_mix(tmp_path):
    directory = tmp_path / "adapter"
    model = _model()
    _stamp(model, 0)
    model.save_pretrained(directory)
    server = subprocess.Popen([sys.executable, "-m", "tests.support.fault_saver", str(directory)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=subprocess_env())
    rng = random.Random(0)
    intact = mid_commit = 0
    seen_versions = set()
    try:
        assert server.stdout.readline().strip() == "ready"
        for run in range(KILL_RUNS):
            server.stdin.write(f"go {(run + 1) * 1000}\n")
            server.stdin.flush()
            pid = int(server.stdout.readline())
            time.sleep(rng.uniform(0.0, 0.03))
            os.kill(pid, signal.SIGKILL)
            assert server.stdout.readline().strip() == "reaped"
            mid_commit += (directory / ".surgery-commit.json").exists()
            seen_versions.add(_version_on_disk(directory))   # raises on a mix
            intact += 1
    finally:
        server.stdin.close()
        server.wait(30)
    assert intact == KILL_RUNS
    assert len(seen_versions) > KILL_RUNS // 3, "the kills should land at many different points"
    print(f"kill-during-save: {KILL_RUNS} runs, {intact} intact, {mid_commit} killed mid-commit (rolled forward)")
    model.save_pretrained(directory)  # the next save sweeps what killed writers left behind
    assert not list(directory.glob(".surgery-tmp-*"))


CONCURRENT_SAVER = """
import sys, torch, surgery
from tests.support import tiny_models
torch.set_num_threads(1)
name, value, directory = sys.argv[1], float(sys.argv[2]), sys.argv[3]
model = surgery.get_peft_model(tiny_models.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"], r=4),
                               adapter_name=name)
for i in range(20):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.fill_(value + i)
    model.save_pretrained(directory)
"""


def test_two_processes_saving_different_adapters_do_not_collide(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_SAVER, name, str(value), str(tmp_path)],
                              env=subprocess_env())
             for name, value in (("default", 1.0), ("other", 2.0))]
    assert [p.wait(120) for p in procs] == [0, 0]
    for sub, value in (("", 1.0 + 19), ("other", 2.0 + 19)):
        tensors = read_tensors(tmp_path / sub)
        assert {float(t.flatten()[0]) for t in tensors.values()} == {value}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_exception_during_apply_leaves_the_model_as_it_was(monkeypatch):
    base = tiny_models.tiny_llama()
    before, types = _state(base), {n: type(m) for n, m in base.named_modules()}
    from surgery.methods.lora.layer import LoraLayer

    calls = {"n": 0}
    original = LoraLayer.update_layer

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("simulated out-of-memory")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LoraLayer, "update_layer", flaky)
    with pytest.raises(PlanError, match="out-of-memory"):
        surgery.apply_rules(base, surgery.LoraConfig(target_modules="all-linear"))
    assert {n: type(m) for n, m in base.named_modules()} == types
    after = base.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_exception_during_merge_rolls_back(monkeypatch):
    model = _model()
    before = _state(model)
    from surgery.methods.lora.linear import Linear

    calls = {"n": 0}
    original = Linear._merged_weight

    def flaky(self, weight, name, sign):
        calls["n"] += 1
        if sign > 0 and calls["n"] == 3:
            raise RuntimeError("simulated failure in the third layer")
        return original(self, weight, name, sign)

    monkeypatch.setattr(Linear, "_merged_weight", flaky)
    with pytest.raises(RuntimeError, match="third layer"):
        model.merge_adapter()
    after = model.state_dict()
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=1e-6, rtol=0)
    assert not any(layer.merged for _, layer in surgery.rewrite.trainable.adapter_layers(model))


def test_safe_merge_names_the_layer_with_nan():
    model = _model()
    layer = model.get_base_model().model.layers[1].self_attn.v_proj
    with torch.no_grad():
        layer.lora_B["default"].weight[0, 0] = float("nan")
    weight = layer.base_layer.weight.clone()
    with pytest.raises(MergeError, match=r"model\.layers\.1\.self_attn\.v_proj"):
        model.merge_adapter(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, weight)
