"""LoraConfig.target_parameters against peft 0.21.2: LoRA on fused 3-D MoE expert weights (Qwen3-MoE and Mixtral
store them (E, out, in), gpt-oss (E, in, out) with is_transposed) and on 2-D parameters.

Every model is a tiny transformers model built from its config (random weights, no Hub). Each comparison gives
peft and surgery the same base and the same adapter tensors (peft's, loaded into surgery by checkpoint key), so
everything must agree: checkpoint keys and shapes, outputs (1e-5), three training steps (losses 1e-5), merged
weights, deltas, counts, and checkpoints load both ways. Memory: the bytes autograd keeps for one step.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import (GptOssConfig, GptOssForCausalLM, MixtralConfig, MixtralForCausalLM, Qwen3MoeConfig,
                          Qwen3MoeForCausalLM)

import surgery
from surgery.methods.lora.param_wrapper import ParamWrapper
from tests.support import tiny_models as tm

peft = pytest.importorskip("peft")

TOL = 1e-5
COMMON = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=8, num_experts_per_tok=2)


def _qwen3_moe(experts="grouped_mm"):
    config = Qwen3MoeConfig(**COMMON, intermediate_size=40, moe_intermediate_size=24, num_experts=4)
    config._experts_implementation = experts
    return Qwen3MoeForCausalLM(config)


def _mixtral(experts="eager"):
    config = MixtralConfig(**COMMON, intermediate_size=24, num_local_experts=4)
    config._experts_implementation = experts
    return MixtralForCausalLM(config)


def _gpt_oss(experts="grouped_mm"):
    config = GptOssConfig(**COMMON, intermediate_size=24, num_local_experts=4, sliding_window=16)
    config._experts_implementation = experts
    return GptOssForCausalLM(config)


BUILDERS = {"qwen3_moe": _qwen3_moe, "mixtral": _mixtral, "gpt_oss": _gpt_oss,
            "mixtral_grouped": lambda: _mixtral("grouped_mm"), "gpt_oss_eager": lambda: _gpt_oss("eager")}
MOE = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
CONFIGS = {   # name -> LoraConfig keywords (all with random, non-zero B: init_lora_weights=False)
    "both": dict(target_modules=[], target_parameters=MOE, r=4, lora_alpha=8),
    "down_only": dict(target_modules=[], target_parameters=["mlp.experts.down_proj"], r=2),
    "split_layers": dict(target_modules=[], target_parameters=["0.mlp.experts.gate_up_proj",
                                                               "1.mlp.experts.down_proj"], r=3, use_rslora=True),
    "with_modules": dict(target_modules=["q_proj", "v_proj"], target_parameters=["mlp.experts.down_proj"], r=4),
}


def _base(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = BUILDERS[name]()
    with torch.no_grad():   # some inits leave zeros (routers, biases): random everywhere
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def _pair(name: str, **kwargs):
    """(base, peft model, surgery model) with the same adapter tensors."""
    kwargs = {"init_lora_weights": False, **kwargs}
    base = _base(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
        ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**kwargs))
    surgery.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    return base, theirs, ours


def _batch(seed: int = 1):
    return torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(seed))


def _wrappers(model):
    return {n: m for n, m in model.named_modules() if type(m).__name__ == "ParamWrapper"}


# -- layout and keys ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["qwen3_moe", "mixtral", "gpt_oss"])
def test_layout_sizes_and_checkpoint_keys_equal_peft(name):
    _, theirs, ours = _pair(name, **CONFIGS["both"])
    want = {k: tuple(v.shape) for k, v in peft.get_peft_model_state_dict(theirs).items()}
    assert {k: tuple(v.shape) for k, v in surgery.get_peft_model_state_dict(ours).items()} == want
    assert any(".base_layer.lora_A." in k for k in want)   # two parameters of one module: stacked wrappers
    sizes = {n: (m.parameter_name, m.num_experts, m.in_features, m.out_features, m._did_swap_in_out_features)
             for n, m in _wrappers(theirs).items()}
    assert {n: (m.parameter_name, m.num_experts, m.in_features, m.out_features, m._did_swap_in_out_features)
            for n, m in _wrappers(ours).items()} == sizes
    assert ours.base_model.targeted_parameter_names == theirs.base_model.targeted_parameter_names
    assert all(isinstance(m, ParamWrapper) for m in _wrappers(ours).values())


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_outputs_equal_peft(name, config):
    base, theirs, ours = _pair(name, **CONFIGS[config])
    x = _batch()
    with torch.no_grad():
        want, got, plain = theirs(x).logits, ours(x).logits, base(x).logits
    assert not torch.allclose(want, plain, atol=1e-3)   # the adapter changes the output
    torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
    with torch.no_grad(), ours.disable_adapter():
        torch.testing.assert_close(ours(x).logits, plain, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("name", ["qwen3_moe", "mixtral", "gpt_oss"])
def test_three_training_steps_give_peft_losses(name):
    _, theirs, ours = _pair(name, **CONFIGS["both"])
    theirs.train(), ours.train()
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in (theirs, ours)]
    for step in range(3):
        x = _batch(seed=10 + step)
        losses = []
        for model, opt in zip((theirs, ours), opts):
            opt.zero_grad()
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) <= TOL, (step, losses)
    want = peft.get_peft_model_state_dict(theirs)
    for key, value in surgery.get_peft_model_state_dict(ours).items():
        torch.testing.assert_close(value, want[key], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss"])
def test_checkpoints_load_both_ways(name, tmp_path):
    base, theirs, ours = _pair(name, **CONFIGS["both"])
    x = _batch()
    with torch.no_grad():
        want = theirs(x).logits
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        into_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    into_ours = surgery.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "theirs")
    with torch.no_grad():
        torch.testing.assert_close(into_peft(x).logits, want, atol=TOL, rtol=TOL)
        torch.testing.assert_close(into_ours(x).logits, want, atol=TOL, rtol=TOL)
    assert set(into_ours.peft_config["default"].target_parameters) == set(MOE)   # peft saves a set: any order


@pytest.mark.parametrize("name", ["qwen3_moe", "mixtral", "gpt_oss"])
def test_merge_and_unload_equals_peft_and_unmerge_restores_the_base(name):
    base, theirs, ours = _pair(name, **CONFIGS["both"])
    x = _batch()
    with torch.no_grad():
        adapted = ours(x).logits
        ours.merge_adapter()
        torch.testing.assert_close(ours(x).logits, adapted, atol=TOL, rtol=TOL)
        ours.unmerge_adapter()
    for key, value in ours.get_base_model().state_dict().items():   # unmerged: the base again
        if "lora_" not in key:
            original = base.state_dict()[key.replace(".base_layer", "")]
            torch.testing.assert_close(value, original, atol=1e-6, rtol=0)
    merged_theirs, merged_ours = theirs.merge_and_unload(), ours.merge_and_unload()
    want = merged_theirs.state_dict()
    assert merged_ours.state_dict().keys() == want.keys() == base.state_dict().keys()
    for key, value in merged_ours.state_dict().items():
        torch.testing.assert_close(value, want[key], atol=1e-6, rtol=0)
    assert not any(type(m).__name__ == "ParamWrapper" for m in merged_ours.modules())


@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss"])
def test_get_delta_weight_equals_peft(name):
    _, theirs, ours = _pair(name, **CONFIGS["both"])
    wanted = _wrappers(theirs)
    for path, layer in _wrappers(ours).items():
        delta = layer.get_delta_weight("default")
        assert delta.shape == layer.get_param().shape
        torch.testing.assert_close(delta, wanted[path].get_delta_weight("default"), atol=1e-7, rtol=0)


def test_per_expert_math_of_the_packed_factors():
    """The layout in words (param_delta.py): expert e's A is rows e r.. of lora_A, its B is columns e, e + E, ..."""
    _, _, ours = _pair("mixtral", **CONFIGS["both"])
    layer = ours.base_model.model.model.layers[0].mlp.experts.base_layer   # gate_up_proj: (E, out, in)
    A, B, r, E = layer.lora_A["default"].weight, layer.lora_B["default"].weight, 4, layer.num_experts
    for e in range(E):
        expected = layer.scaling["default"] * B[:, e::E] @ A[e * r:(e + 1) * r]
        torch.testing.assert_close(layer.get_delta_weight("default")[e], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss"])
def test_a_bfloat16_base_computes_as_peft_with_one_and_two_active_adapters(name):
    """float32 factors on a bf16 base (autocast_adapter_dtype): PEFT's arithmetic exactly (one fused baddbmm in
    bf16 for one adapter; deltas rounded to bf16, summed, added for two)."""
    base = _base(name).to(torch.bfloat16)
    kwargs = dict(CONFIGS["both"], init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
        theirs.add_adapter("other", peft.LoraConfig(**kwargs))
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**kwargs))
    ours.add_adapter("other", surgery.LoraConfig(**kwargs))
    for adapter in ("default", "other"):
        surgery.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs, adapter_name=adapter), adapter)
    assert {p.dtype for n, p in ours.named_parameters() if "lora_" in n} == {torch.float32}
    x = _batch()
    for active in (["default"], ["default", "other"]):
        theirs.base_model.set_adapter(active), ours.base_model.set_adapter(active)
        with torch.no_grad():
            assert torch.equal(ours(x).logits, theirs(x).logits), active


# -- counts and the plan ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["both", "with_modules", "split_layers"])
def test_trainable_parameter_line_and_plan_table(config, capsys):
    _, theirs, ours = _pair("qwen3_moe", **CONFIGS[config])
    theirs.print_trainable_parameters()
    want = capsys.readouterr().out
    ours.print_trainable_parameters()
    assert capsys.readouterr().out == want
    plan = ours.plan()
    assert plan.totals_line() == want.strip()
    table = plan.table()
    rows = [r for r in plan.rewrites if r.parameter]
    assert rows and all(r.target in table for r in rows)
    row = next(r for r in rows if r.parameter == "down_proj")
    assert row.base_shape == (4, 32, 24) and row.params["r"] == CONFIGS[config]["r"]
    assert row.added_params == CONFIGS[config]["r"] * 4 * (32 + 24)
    assert "4x32x24" in table and f"{row.added_params:,d}" in table
    assert surgery.Plan.from_json(plan.to_json()).rewrites == plan.rewrites


def test_rank_and_alpha_patterns_match_module_dot_parameter():
    kwargs = dict(CONFIGS["both"], rank_pattern={"experts.gate_up_proj": 1}, alpha_pattern={"down_proj": 3})
    _, theirs, ours = _pair("mixtral", **kwargs)
    for path, layer in _wrappers(theirs).items():
        mine = _wrappers(ours)[path]
        assert (mine.r, mine.lora_alpha, mine.scaling) == (layer.r, layer.lora_alpha, layer.scaling)


# -- several adapters, unload, the 2-D case ---------------------------------------------------------------------
def test_second_adapter_reuses_the_wrappers_and_switches_like_peft():
    base, theirs, ours = _pair("qwen3_moe", **CONFIGS["both"])
    other = dict(CONFIGS["both"], init_lora_weights=False, r=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.add_adapter("other", peft.LoraConfig(**other))
    ours.add_adapter("other", surgery.LoraConfig(**other))
    surgery.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs, adapter_name="other"), "other")
    assert len(_wrappers(ours)) == len(_wrappers(theirs)) == 4
    assert all(set(m.lora_A) == {"default", "other"} for m in _wrappers(ours).values())
    x = _batch()
    for active in ("other", "default"):
        theirs.set_adapter(active), ours.set_adapter(active)
        with torch.no_grad():
            torch.testing.assert_close(ours(x).logits, theirs(x).logits, atol=TOL, rtol=TOL)
    ours.delete_adapter("other")
    assert all(set(m.lora_A) == {"default"} for m in _wrappers(ours).values())
    ours.delete_adapter("default")   # nothing left: the stacked wrappers unwrap, innermost first
    assert not _wrappers(ours)
    assert type(ours.get_base_model().model.layers[0].mlp.experts).__name__ == "Qwen3MoeExperts"
    assert ours.get_base_model().state_dict().keys() == base.state_dict().keys()


def test_unload_and_base_model_state_dict_give_the_original_keys():
    base, _, ours = _pair("gpt_oss", **CONFIGS["both"])
    assert surgery.get_base_model_state_dict(ours).keys() == base.state_dict().keys()
    unloaded = ours.unload()
    assert [type(m).__name__ for m in unloaded.modules()] == [type(m).__name__ for m in base.modules()]
    x = _batch()
    with torch.no_grad():
        torch.testing.assert_close(unloaded(x).logits, base(x).logits, atol=0, rtol=0)


def test_a_2d_parameter_target_equals_peft_and_the_module_target():
    base = tm.tiny_llama()
    kwargs = dict(target_modules=[], target_parameters=["gate_proj.weight"], init_lora_weights=False, r=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kwargs))
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**kwargs))
    as_module = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(target_modules=["gate_proj"], r=4))
    state = peft.get_peft_model_state_dict(theirs)
    surgery.set_peft_model_state_dict(ours, state)
    surgery.set_peft_model_state_dict(as_module, state)   # same keys: <path>.lora_A.weight, (r, in)
    x = tm.token_batch(vocab=base.config.vocab_size)
    with torch.no_grad():
        want = theirs(x).logits
        torch.testing.assert_close(ours(x).logits, want, atol=TOL, rtol=TOL)
        torch.testing.assert_close(as_module(x).logits, want, atol=TOL, rtol=TOL)


# -- memory --------------------------------------------------------------------------------------------------
def _saved_bytes(model, x) -> int:
    """Bytes autograd keeps for backward in one training step, each storage once, parameters left out."""
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=x, labels=x).loss
    loss.backward()
    return sum(storages.values())


@pytest.mark.parametrize("name", ["qwen3_moe", "mixtral"])
def test_one_step_keeps_at_most_one_dense_copy_per_targeted_weight(name):
    base, theirs, ours = _pair(name, **CONFIGS["both"])
    base.requires_grad_(False)
    for model in (base, theirs.get_base_model(), ours.get_base_model()):
        model.enable_input_require_grads()   # backward through every layer in all three: activations alike
    x = _batch()
    plain, theirs_bytes, ours_bytes = (_saved_bytes(m, x) for m in (base, theirs, ours))
    experts = base.model.layers[0].mlp.experts
    dense = 2 * (experts.gate_up_proj.numel() + experts.down_proj.numel()) * 4   # both layers, float32
    factors = sum(p.numel() * 4 for n, p in ours.named_parameters() if "lora_" in n)
    assert ours_bytes - plain <= dense + 2 * factors, (ours_bytes - plain, dense, factors)
    assert ours_bytes <= theirs_bytes
