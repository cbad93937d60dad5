"""merge / unmerge / safe_merge / disable_adapter / merge_and_unload / unload, and which parameters get gradients."""
from __future__ import annotations


import pytest
import torch
from torch import nn

import surgery
from tests.support import tiny_models as tm
from tests.support.helpers import MODELS, adapter_layers, max_diff, peft_model, perturb_adapters, run, surgery_model
from surgery.errors import MergeError

CONVS = ["conv2d", "conv2d_strided", "conv1d", "conv3d"]

# (model, config kwargs): Linear, Conv1D (fan_in_fan_out), Embedding, Conv1d/2d/3d, DoRA (Linear and Conv1D)
MERGE_CASES = [
    ("llama", dict(target_modules=["q_proj", "v_proj", "down_proj", "lm_head"], r=4)),
    ("llama_bias", dict(target_modules=["q_proj", "o_proj"], r=4, lora_bias=True, use_rslora=True, lora_alpha=6)),
    ("gpt2", dict(target_modules=["c_attn", "c_proj", "c_fc"], r=4)),
    ("embedding", dict(target_modules=["emb", "lin0"], r=4)),
    ("llama", dict(target_modules=["embed_tokens"], r=3)),
    ("conv", dict(target_modules=CONVS, r=2)),
    ("conv", dict(target_modules=CONVS + ["head"], r=3, lora_alpha=7, lora_bias=True)),
    ("llama", dict(target_modules=["q_proj", "v_proj", "down_proj"], r=4, use_dora=True)),
    ("gpt2", dict(target_modules=["c_attn", "c_fc"], r=4, use_dora=True)),
    ("bert", dict(target_modules=["query", "value", "dense"], r=4, bias="lora_only")),
    ("t5", dict(target_modules=["q", "v", "wo"], r=4, task_type="SEQ_2_SEQ_LM")),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(MERGE_CASES)]


def adapted(name, seed=1234, **kwargs):
    """(base, PeftModel wrapping that very base) with non-identity adapters."""
    base = MODELS[name][0]()
    model = surgery.get_peft_model(base, surgery.LoraConfig(**kwargs))
    perturb_adapters(model, seed=seed)
    return base, model.eval()


def base_weights(model) -> dict[str, torch.Tensor]:
    """Every base-layer tensor of the wrapped model (weights and biases), cloned."""
    return {k: v.clone() for k, v in model.get_base_model().state_dict().items()
            if "lora_" not in k and "modules_to_save" not in k}


@pytest.mark.parametrize("name, kwargs", MERGE_CASES, ids=IDS)
def test_merge_then_unmerge_restores_weights_and_outputs_agree(name, kwargs):
    _, model = adapted(name, **kwargs)
    before = base_weights(model)
    want = run(model, name)
    model.merge_adapter()
    layers = [layer for _, layer in adapter_layers(model.get_base_model())]
    assert layers and all(layer.merged for layer in layers)
    merged_weights = base_weights(model)
    assert any(max_diff(merged_weights[k], before[k]) > 1e-4 for k in before), "merging must change weights"
    assert max_diff(run(model, name), want) <= 1e-5
    model.unmerge_adapter()
    assert not any(layer.merged for layer in layers)
    after = base_weights(model)
    assert set(after) == set(before)
    for k in before:
        assert max_diff(after[k], before[k]) <= 1e-6, k
    assert max_diff(run(model, name), want) <= 1e-5


@pytest.mark.parametrize("name, kwargs", MERGE_CASES, ids=IDS)
def test_merge_and_unload_returns_a_plain_model_with_the_same_outputs(name, kwargs):
    base, model = adapted(name, **kwargs)
    want = run(model, name)
    base_types = {n: type(m) for n, m in MODELS[name][0]().named_modules()}
    merged = model.merge_and_unload()
    assert merged is base  # the same model object, rewritten back
    assert adapter_layers(merged) == []
    assert not any("lora_" in n or "base_layer" in n for n, _ in merged.named_modules())
    assert not any("lora_" in k or "base_layer" in k for k in merged.state_dict())
    assert {n: type(m) for n, m in merged.named_modules()} == base_types
    assert max_diff(run(merged, name), want) <= 1e-5


@pytest.mark.parametrize("name, kwargs", MERGE_CASES, ids=IDS)
def test_unload_returns_the_original_modules_untouched(name, kwargs):
    base = MODELS[name][0]()
    originals = dict(base.named_modules())
    state = {k: v.clone() for k, v in base.state_dict().items()}
    want = run(base, name)
    model = surgery.get_peft_model(base, surgery.LoraConfig(**kwargs))  # on `base` itself, not a copy
    perturb_adapters(model, biases=False)  # trained biases belong to the base model; leave them be here
    unloaded = model.unload()
    assert unloaded is base
    assert dict(unloaded.named_modules()).keys() == originals.keys()
    for n, m in unloaded.named_modules():
        assert m is originals[n], n  # the very same module objects
    now = unloaded.state_dict()
    assert list(now) == list(state) and all(torch.equal(now[k], state[k]) for k in state)
    assert torch.equal(run(unloaded, name), want)


@pytest.mark.parametrize("name, kwargs", MERGE_CASES, ids=IDS)
def test_disable_adapter_is_bit_identical_to_the_base_model(name, kwargs):
    base = MODELS[name][0]()
    want = run(base, name)
    model = surgery.get_peft_model(base, surgery.LoraConfig(**kwargs))
    perturb_adapters(model, biases=False)  # trained biases belong to the base model; leave them be here
    model.eval()
    adapted_out = run(model, name)
    assert max_diff(adapted_out, want) > 1e-3
    with model.disable_adapter():
        assert torch.equal(run(model, name), want)
    assert torch.equal(run(model, name), adapted_out)  # enabled again afterwards


def test_disable_adapter_restores_even_after_an_exception():
    _, model = adapted("llama", target_modules=["q_proj"], r=2)
    want = run(model, "llama")
    with pytest.raises(RuntimeError):
        with model.disable_adapter():
            raise RuntimeError("boom")
    assert torch.equal(run(model, "llama"), want)


def test_disable_adapter_on_a_merged_model_unmerges_first():
    base = tm.tiny_llama()
    model = surgery_model(base, target_modules=["q_proj", "v_proj"], r=4)
    perturb_adapters(model)
    model.eval()
    want_base = run(tm.tiny_llama(), "llama")
    adapted_out = run(model, "llama")
    model.merge_adapter()
    with model.disable_adapter():
        assert max_diff(run(model, "llama"), want_base) <= 1e-5
    assert max_diff(run(model, "llama"), adapted_out) <= 1e-5


def test_merging_twice_is_a_no_op():
    _, model = adapted("llama", target_modules=["q_proj"], r=2)
    model.merge_adapter()
    once = base_weights(model)
    model.merge_adapter()
    assert all(torch.equal(once[k], v) for k, v in base_weights(model).items())


# -- safe_merge ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name, kwargs, layer", [
    ("llama", dict(target_modules=["q_proj", "v_proj"], r=4), "model.layers.1.self_attn.v_proj"),
    ("llama", dict(target_modules=["q_proj", "v_proj"], r=4, use_dora=True), "model.layers.1.self_attn.q_proj"),
    ("gpt2", dict(target_modules=["c_attn", "c_proj"], r=4), "transformer.h.1.attn.c_attn"),
    ("embedding", dict(target_modules=["lin0", "emb"], r=4), "emb"),
    ("conv", dict(target_modules=CONVS, r=2), "conv3d"),
])
def test_safe_merge_refuses_non_finite_weights_naming_the_layer(name, kwargs, layer, bad):
    _, model = adapted(name, **kwargs)
    target = model.get_base_model().get_submodule(layer)
    with torch.no_grad():
        if "default" in target.lora_B:
            target.lora_B["default"].weight.view(-1)[0] = bad
        else:
            target.lora_embedding_B["default"].view(-1)[0] = bad
    before = base_weights(model)
    with pytest.raises(MergeError) as info:
        model.merge_adapter(safe_merge=True)
    assert layer in str(info.value)
    after = base_weights(model)
    for k in before:   # every layer is checked on copies before the first is written: nothing changed at all
        assert torch.equal(after[k], before[k]), k
    assert not any(lay.merged for _, lay in adapter_layers(model.get_base_model()))
    with pytest.raises(MergeError):
        model.merge_and_unload(safe_merge=True)
    assert adapter_layers(model.get_base_model())  # still wrapped


def test_safe_merge_of_finite_weights_equals_plain_merge():
    _, a = adapted("gpt2", target_modules=["c_attn", "c_proj"], r=4)
    _, b = adapted("gpt2", target_modules=["c_attn", "c_proj"], r=4)
    a.merge_adapter(safe_merge=True)
    b.merge_adapter()
    wa, wb = base_weights(a), base_weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_merge_error_is_a_surgery_error():
    assert issubclass(MergeError, surgery.SurgeryError)


# -- gradients -----------------------------------------------------------------------------------------------
def _loss(model, name):
    _, make_inputs, call = MODELS[name]
    out = call(model, make_inputs())
    return out.float().pow(2).mean()


@pytest.mark.parametrize("name, kwargs", [
    ("llama", dict(target_modules=["q_proj", "v_proj"], r=4)),
    ("llama", dict(target_modules="all-linear", r=2, use_dora=True, modules_to_save=["lm_head"])),
    ("llama_bias", dict(target_modules=["q_proj", "v_proj"], r=4, bias="lora_only")),
    ("llama_bias", dict(target_modules=["q_proj"], r=4, bias="all")),
    ("gpt2", dict(target_modules=["c_attn", "wte"], r=4, lora_dropout=0.1)),
    ("bert_cls", dict(target_modules=["query", "value"], r=4, task_type="SEQ_CLS")),
    ("bert_cls", dict(target_modules=["query"], r=4, task_type="SEQ_CLS", bias="all")),
    ("conv", dict(target_modules=CONVS, r=2, lora_bias=True)),
    ("embedding", dict(target_modules=["emb"], r=2, modules_to_save=["lin1"])),
])
def test_gradients_reach_only_adapter_parameters(name, kwargs):
    model = surgery_model(MODELS[name][0](), **kwargs)
    perturb_adapters(model)  # B != 0 so that A gets a gradient too
    model.train()
    bias_mode = kwargs.get("bias", "none")
    for n, p in model.named_parameters():
        is_adapter = "lora_" in n or ".modules_to_save." in n
        is_trained_bias = n.endswith(".bias") and ".original_module." not in n and (
            bias_mode == "all" or (bias_mode == "lora_only" and n.endswith("base_layer.bias")))
        assert p.requires_grad == (is_adapter or is_trained_bias), n
    _loss(model, name).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if p.requires_grad}
    for n in with_grad:
        assert "lora_" in n or ".modules_to_save." in n or n.endswith(".bias"), n
    assert any(model.get_parameter(n).grad.abs().sum() > 0 for n in with_grad if "lora_A" in n or "lora_embedding_A" in n)


def test_inference_mode_freezes_everything():
    model = surgery_model(tm.tiny_llama(), target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"],
                          inference_mode=True, bias="all")
    assert not any(p.requires_grad for p in model.parameters())
    assert model.get_nb_trainable_parameters()[0] == 0
    out = model(input_ids=tm.token_batch()).logits
    assert not out.requires_grad


def test_only_the_active_adapter_trains():
    model = surgery_model(tm.tiny_llama(), target_modules=["q_proj"], r=2)
    model.add_adapter("other", surgery.LoraConfig(target_modules=["q_proj", "k_proj"], r=2))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default" in n for n in trainable)
    model.set_adapter("other")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".other" in n for n in trainable)
    perturb_adapters(model)
    model.train()
    _loss(model, "llama").backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable


def test_sgd_step_changes_only_adapter_weights():
    model = surgery_model(tm.tiny_llama(), target_modules=["q_proj", "v_proj"], r=4)
    before = {n: p.clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    x = tm.token_batch()
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)  # B starts at zero and moves first


def test_plain_modules_wrapped_directly():
    """A model that is not a transformers model: LoRA on a bare nn.Sequential, merged and unloaded."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(5, 8)
    model = surgery.get_peft_model(base, surgery.LoraConfig(target_modules=["0", "2"], r=2))
    perturb_adapters(model)
    with torch.no_grad():
        want = model(x)
        merged = model.merge_and_unload()
        assert type(merged[0]) is nn.Linear and max_diff(merged(x), want) <= 1e-5


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("second_dora", [True, False], ids=["dora+dora", "dora+lora"])
def test_merging_several_adapters_with_dora_equals_peft(second_dora):
    """DoRA's norm comes from the unmerged weight even when another adapter is merged first (as PEFT);
    merged weights agree with PEFT's to float32 rounding (1e-6), and unmerging restores the base (1e-6)."""
    import peft

    base = tm.tiny_llama()
    theirs = peft_model(base, target_modules=["q_proj", "v_proj"], r=4, use_dora=True)
    theirs.add_adapter("b", peft.LoraConfig(target_modules=["q_proj", "v_proj"], r=2, use_dora=second_dora))
    perturb_adapters(theirs)
    ours = surgery_model(base, target_modules=["q_proj", "v_proj"], r=4, use_dora=True)
    ours.add_adapter("b", surgery.LoraConfig(target_modules=["q_proj", "v_proj"], r=2, use_dora=second_dora))
    ours.load_state_dict(theirs.state_dict())
    for model in (ours, theirs):
        model.base_model.merge_adapter(adapter_names=["default", "b"])
    mine, peft_weights = base_weights(ours), base_weights(theirs)
    assert all(max_diff(mine[k], peft_weights[k]) <= 1e-6 for k in mine)
    ours.base_model.unmerge_adapter()
    original = base.state_dict()
    for key, weight in base_weights(ours).items():
        assert max_diff(weight, original[key.replace(".base_layer", "")]) <= 1e-6
