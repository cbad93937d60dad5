"""Half-precision bases against PEFT: autocast_adapter_dtype (float32 adapters, the default) and without it.

Tolerances: LoRA outputs and merged / unmerged weights are bit-identical to PEFT's (the same float32 ops,
rounded to the base dtype at the same points). DoRA computes its row norm by a decomposition (no out x in
temporary), which differs from PEFT's direct norm by float32 rounding; after rounding to the base dtype that is
at most one unit in the last place of the base dtype, so DoRA is held to 1 ulp (relative 2**-7 for bf16,
2**-10 for fp16, of the compared magnitude).
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import surgery
from tests.support import tiny_models as tm
from tests.support.helpers import MODELS, max_diff, perturb_adapters, run

ULP = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}
CASES = {   # name -> (MODELS key, LoraConfig kwargs)
    "linear": ("llama", dict(target_modules="all-linear")),
    "dora": ("llama", dict(target_modules="all-linear", use_dora=True)),
    "embedding": ("embedding", dict(target_modules=["emb", "lin0"])),
    "conv": ("conv", dict(target_modules=["conv2d", "conv1d", "head"])),
    "conv1d_gpt2": ("gpt2", dict(target_modules=["c_attn"])),
}


def _pair(case: str, dtype, autocast: bool = True):
    import peft

    key, kwargs = CASES[case]
    base = MODELS[key][0]().to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, **kwargs),
                                     autocast_adapter_dtype=autocast)
        perturb_adapters(theirs, biases=False)
        ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(r=4, lora_alpha=8, **kwargs),
                                      autocast_adapter_dtype=autocast)
    ours.load_state_dict(theirs.state_dict())
    inputs = MODELS[key][1]()
    if key == "conv":
        inputs = inputs.to(dtype)
    return key, ours.eval(), theirs.eval(), inputs


def _close(got, want, dtype, exact: bool):
    if exact:
        return max_diff(got, want) == 0
    scale = max(want.float().abs().max().item(), 1e-3)
    return max_diff(got, want) <= ULP[dtype] * scale


def _base_weights(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if k.endswith("base_layer.weight")}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
def test_float32_adapters_on_a_half_base_match_peft(case, dtype):
    key, ours, theirs, inputs = _pair(case, dtype)
    exact = case != "dora"
    ours_dtypes = {k: v.dtype for k, v in ours.state_dict().items()}
    assert ours_dtypes == {k: v.dtype for k, v in theirs.state_dict().items()}
    assert {v for k, v in ours_dtypes.items() if "lora_" in k} == {torch.float32}
    got, want = run(ours, key, inputs), run(theirs, key, inputs)
    assert got.dtype == want.dtype == dtype            # the model's interface keeps the base dtype
    assert _close(got, want, dtype, exact)
    for safe in (False, True):
        ours.merge_adapter(safe_merge=safe)
        theirs.merge_adapter(safe_merge=safe)
        ours_w, theirs_w = _base_weights(ours), _base_weights(theirs)
        assert all(_close(ours_w[k], theirs_w[k], dtype, exact) for k in theirs_w), f"merged, safe={safe}"
        assert _close(run(ours, key, inputs), run(theirs, key, inputs), dtype, exact)
        ours.unmerge_adapter()
        theirs.unmerge_adapter()
        ours_w, theirs_w = _base_weights(ours), _base_weights(theirs)
        assert all(_close(ours_w[k], theirs_w[k], dtype, exact) for k in theirs_w), f"unmerged, safe={safe}"


@pytest.mark.parametrize("case", ["linear", "dora"])
def test_without_autocast_adapters_keep_the_base_dtype_and_match_peft(case):
    key, ours, theirs, inputs = _pair(case, torch.bfloat16, autocast=False)
    assert {v.dtype for k, v in ours.state_dict().items() if "lora_" in k} == {torch.bfloat16}
    assert _close(run(ours, key, inputs), run(theirs, key, inputs), torch.bfloat16, exact=case != "dora")


def test_peft_saved_adapter_on_a_bf16_base_loads_with_peft_outputs(tmp_path):
    import peft

    key, _, theirs, inputs = _pair("linear", torch.bfloat16)
    theirs.save_pretrained(str(tmp_path))
    base = MODELS[key][0]().to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))
    ours = surgery.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))
    assert max_diff(run(ours, key, inputs), run(reloaded, key, inputs)) == 0
    ours.load_adapter(str(tmp_path), adapter_name="again")
    layer = ours.get_base_model().model.layers[0].self_attn.q_proj
    assert layer.lora_A["again"].weight.dtype == torch.float32
    ours.add_adapter("plain", surgery.LoraConfig(target_modules=["q_proj"], r=2), autocast_adapter_dtype=False)
    assert layer.lora_A["plain"].weight.dtype == torch.bfloat16


def test_float32_adapters_train_and_only_they_change():
    model = surgery.get_peft_model(tm.tiny_llama().to(torch.bfloat16),
                                   surgery.LoraConfig(target_modules=["q_proj", "v_proj"], r=4, init_lora_weights=False,
                                                      modules_to_save=["lm_head"]))
    assert model.get_base_model().lm_head.modules_to_save["default"].weight.dtype == torch.bfloat16  # as PEFT
    model.train()
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(input_ids=tm.token_batch()).logits
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    opt.step()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])]
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)


@pytest.mark.parametrize("r, alpha", [(4, 8), (6, 8), (16, 7)], ids=["s=2", "s=4/3", "s=7/16"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_merges_equal_peft_bit_for_bit(dtype, r, alpha):
    """The fast path for float32 factors on a half-precision weight (a float32 copy of W instead of a mixed-
    dtype add) keeps PEFT's roundings, for scalings that are powers of two and for those that are not."""
    import peft

    from tests.support import tiny_models as tm
    base = tm.tiny_llama().to(dtype)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=r, lora_alpha=alpha,
                                                                      target_modules=["q_proj", "down_proj"]))
    perturb_adapters(theirs, biases=False)
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(r=r, lora_alpha=alpha,
                                                                          target_modules=["q_proj", "down_proj"]))
    ours.load_state_dict(theirs.state_dict())
    a, b = ours.merge_and_unload().state_dict(), theirs.merge_and_unload().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
