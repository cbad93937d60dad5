"""Round trips: train → save → load gives the same model; merge → transformers save/load gives the same outputs;
adapters move between surgery and real peft in both directions."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

import surgery
from tests.support import tiny_models as tm
from tests.support.helpers import MODELS, max_diff, peft_model, perturb_adapters, run, surgery_model

peft = pytest.importorskip("peft")


def train(model, steps: int = 3, lr: float = 0.5) -> list[float]:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    x = tm.token_batch()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Llama with LoRA (all-linear, DoRA on, lm_head saved in full) after a few SGD steps, saved."""
    cfg = surgery.LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", r=4, lora_alpha=8, use_dora=True,
                             modules_to_save=["lm_head"], lora_dropout=0.1)
    model = surgery.get_peft_model(tm.tiny_llama(), cfg)
    losses = train(model)
    model.eval()
    out = tmp_path_factory.mktemp("trained")
    model.save_pretrained(str(out))
    return model, out, losses


def test_training_lowers_the_loss(trained):
    _, _, losses = trained
    assert losses[-1] < losses[0]


def test_save_then_load_into_a_fresh_base_gives_equal_outputs(trained):
    model, directory, _ = trained
    want = run(model, "llama")
    assert max_diff(want, run(tm.tiny_llama(), "llama")) > 1e-3
    loaded = surgery.PeftModel.from_pretrained(tm.tiny_llama(), str(directory))
    assert type(loaded) is surgery.PeftModelForCausalLM
    assert max_diff(run(loaded, "llama"), want) <= 1e-6
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert loaded.peft_config["default"].to_dict() == {**model.peft_config["default"].to_dict(),
                                                      "inference_mode": True, "peft_version": "0.21.2"}
    assert not any(p.requires_grad for p in loaded.parameters())


def test_saved_files_are_peft_format(trained):
    model, directory, _ = trained
    assert {p.name for p in directory.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["inference_mode"] is True and config["task_type"] == "CAUSAL_LM"
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    keys = set(load_file(str(directory / "adapter_model.safetensors")))
    assert keys == set(peft.get_peft_model_state_dict(peft_model(
        tm.tiny_llama(), task_type="CAUSAL_LM", target_modules="all-linear", r=4, use_dora=True,
        modules_to_save=["lm_head"])))
    assert all(".default." not in k for k in keys)


def test_peft_loads_what_surgery_trained(trained):
    model, directory, _ = trained
    theirs = peft.PeftModel.from_pretrained(tm.tiny_llama(), str(directory)).eval()
    assert max_diff(run(theirs, "llama"), run(model, "llama")) <= 1e-5  # DoRA: 1e-5


def test_load_trainable_and_keep_training(trained):
    _, directory, _ = trained
    loaded = surgery.PeftModel.from_pretrained(tm.tiny_llama(), str(directory), is_trainable=True)
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    x = tm.token_batch()

    def eval_loss():
        loaded.eval()
        with torch.no_grad():
            return loaded(input_ids=x, labels=x).loss.item()

    before = eval_loss()
    train(loaded, steps=3, lr=0.1)
    assert eval_loss() < before


def test_merge_and_unload_then_transformers_save_and_reload(trained, tmp_path):
    _, directory, _ = trained
    model = surgery.PeftModel.from_pretrained(tm.tiny_llama(), str(directory))
    want = run(model, "llama")
    merged = model.merge_and_unload()
    assert type(merged) is transformers.LlamaForCausalLM
    assert not any("lora_" in k or "base_layer" in k or "modules_to_save" in k for k in merged.state_dict())
    merged.save_pretrained(str(tmp_path))
    reloaded = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert max_diff(run(reloaded, "llama"), want) <= 1e-5


# -- several adapters --------------------------------------------------------------------------------------
def test_several_adapters_round_trip_with_subfolders(tmp_path):
    model = surgery_model(tm.tiny_llama(), target_modules=["q_proj", "v_proj"], r=4)
    model.add_adapter("other", surgery.LoraConfig(target_modules=["k_proj", "gate_proj"], r=2, lora_alpha=4))
    perturb_adapters(model)
    model.eval()
    outputs = {}
    for name in ("default", "other"):
        model.set_adapter(name)
        outputs[name] = run(model, "llama")
    assert max_diff(outputs["default"], outputs["other"]) > 1e-3
    model.save_pretrained(str(tmp_path))
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "other" / "adapter_config.json").is_file()
    loaded = surgery.PeftModel.from_pretrained(tm.tiny_llama(), str(tmp_path))
    loaded.load_adapter(str(tmp_path / "other"), "other")
    for name in ("default", "other"):
        loaded.set_adapter(name)
        assert max_diff(run(loaded, "llama"), outputs[name]) <= 1e-6, name
    # selected_adapters saves only those
    only = tmp_path / "only"
    model.save_pretrained(str(only), selected_adapters=["other"])
    assert not (only / "adapter_config.json").exists() and (only / "other" / "adapter_model.safetensors").is_file()


def test_bin_serialization_round_trip(tmp_path):
    model = surgery_model(tm.tiny_gpt2(), target_modules=["c_attn", "wte"], r=4)
    perturb_adapters(model)
    model.eval()
    model.save_pretrained(str(tmp_path), safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").is_file() and not (tmp_path / "adapter_model.safetensors").exists()
    loaded = surgery.PeftModel.from_pretrained(tm.tiny_gpt2(), str(tmp_path))
    assert max_diff(run(loaded, "gpt2"), run(model, "gpt2")) <= 1e-6


def test_state_dict_functions_round_trip():
    model = surgery_model(tm.tiny_t5(), target_modules=["q", "v"], r=4, task_type="SEQ_2_SEQ_LM")
    perturb_adapters(model)
    state = surgery.get_peft_model_state_dict(model)
    theirs = peft.get_peft_model_state_dict(peft_model(tm.tiny_t5(), target_modules=["q", "v"], r=4,
                                                       task_type="SEQ_2_SEQ_LM"))
    assert set(state) == set(theirs)
    fresh = surgery_model(tm.tiny_t5(), target_modules=["q", "v"], r=4, task_type="SEQ_2_SEQ_LM")
    surgery.set_peft_model_state_dict(fresh, state)
    assert max_diff(run(fresh.eval(), "t5"), run(model.eval(), "t5")) <= 1e-6
    # as PEFT: a key the model has no place for is skipped, reported and warned about; a missing one is an error
    with pytest.warns(surgery.PeftWarning, match="no place for"):
        result = surgery.set_peft_model_state_dict(fresh, {**state, "base_model.model.nope.lora_A.weight":
                                                           torch.zeros(1)})
    assert result.unexpected_keys == ["base_model.model.nope.lora_A.weight"] and result.missing_keys == []
    with pytest.raises(surgery.SurgeryError, match="lacks"):
        surgery.set_peft_model_state_dict(fresh, dict(list(state.items())[1:]))


# -- both directions with real peft, on fresh configs ----------------------------------------------------------
BOTH_WAYS = [
    ("gpt2", dict(task_type="CAUSAL_LM", target_modules=["c_attn", "c_proj", "wte"], r=4, fan_in_fan_out=True,
                  lora_dropout=0.1)),
    ("llama_bias", dict(task_type="CAUSAL_LM", target_modules="all-linear", r=4, bias="lora_only", lora_bias=True,
                        rank_pattern={"o_proj": 2}, alpha_pattern={"q_proj": 3})),
    ("bert_cls", dict(task_type="SEQ_CLS", target_modules=["query", "value"], r=2, bias="all")),
    ("t5", dict(task_type="SEQ_2_SEQ_LM", target_modules="all-linear", r=2, use_rslora=True)),
    ("conv", dict(target_modules=["conv2d", "conv1d", "conv3d", "head"], r=2, init_lora_weights="gaussian")),
    ("embedding", dict(target_modules=["emb", "lin0"], r=4, modules_to_save=["lin1"])),
]


# surgery's no-grad float32 forward adds s (x A^T) B^T into the base output in one addmm (scaling inside the GEMM),
# PEFT as separate ops: 1 ulp per layer, which T5's unscaled residual stream (logits ~2) carries to ~2e-6
CROSS_LIBRARY = 1e-5


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name, kwargs", BOTH_WAYS, ids=[n for n, _ in BOTH_WAYS])
def test_peft_saved_adapter_loads_in_surgery(name, kwargs, tmp_path):
    builder = MODELS[name][0]
    theirs = peft_model(builder(), **kwargs)
    perturb_adapters(theirs)
    theirs.eval()
    theirs.save_pretrained(str(tmp_path))
    ours = surgery.PeftModel.from_pretrained(builder(), str(tmp_path))
    assert type(ours).__name__ == type(theirs).__name__
    assert max_diff(run(ours, name), run(theirs, name)) <= CROSS_LIBRARY


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name, kwargs", BOTH_WAYS, ids=[n for n, _ in BOTH_WAYS])
def test_surgery_saved_adapter_loads_in_peft(name, kwargs, tmp_path):
    builder = MODELS[name][0]
    ours = surgery.get_peft_model(builder(), surgery.LoraConfig(**kwargs))
    perturb_adapters(ours)
    ours.eval()
    ours.save_pretrained(str(tmp_path))
    theirs = peft.PeftModel.from_pretrained(builder(), str(tmp_path)).eval()
    assert type(ours).__name__ == type(theirs).__name__
    assert max_diff(run(theirs, name), run(ours, name)) <= CROSS_LIBRARY
    theirs_keys = set(peft.get_peft_model_state_dict(peft_model(builder(), **kwargs)))
    assert set(load_file(str(tmp_path / "adapter_model.safetensors"))) <= theirs_keys


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("targets, layer", [(["embed_tokens", "q_proj"], "model.embed_tokens"),
                                            (["lm_head", "v_proj"], "lm_head")])
def test_peft_adapter_with_saved_embedding_weights_loads_in_surgery(targets, layer, tmp_path):
    """peft saves the full base weight of a LoRA-wrapped embed_tokens / lm_head (save_embedding_layers="auto");
    surgery loads it into that layer's base weight, as peft does."""
    theirs = peft_model(tm.tiny_llama(), target_modules=targets, r=2)
    perturb_adapters(theirs)
    with torch.no_grad():  # as after resizing or training the embeddings
        theirs.base_model.model.get_submodule(layer).base_layer.weight.mul_(1.5)
    theirs.save_pretrained(str(tmp_path))
    assert f"base_model.model.{layer}.base_layer.weight" in load_file(str(tmp_path / "adapter_model.safetensors"))
    ours = surgery.PeftModel.from_pretrained(tm.tiny_llama(), str(tmp_path))
    assert max_diff(run(ours, "llama"), run(theirs.eval(), "llama")) <= 1e-6


@pytest.mark.filterwarnings("ignore")
def test_bias_all_with_a_trained_head_saves_peft_s_keys_and_loads_both_ways(tmp_path):
    import peft

    base = tm.tiny_bert_seq_cls()
    kwargs = dict(task_type="SEQ_CLS", target_modules=["query"], bias="all")
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**kwargs))
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
    assert sorted(surgery.get_peft_model_state_dict(ours)) == sorted(peft.get_peft_model_state_dict(theirs))
    perturb_adapters(ours)
    ours.save_pretrained(tmp_path)
    again = surgery.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))
    in_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))
    assert max_diff(run(again, "bert_cls"), run(ours.eval(), "bert_cls")) <= 1e-6
    assert max_diff(run(in_peft.eval(), "bert_cls"), run(ours, "bert_cls")) <= 1e-6
