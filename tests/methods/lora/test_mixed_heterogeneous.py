"""Mixed batches over adapters of different ranks (the rank-bucketed path of methods/lora/mixed.py).

Every row of a mixed batch must equal that sample run alone on its adapter (max |diff| <= 1e-5, rtol 0: the
bucketed bmm sums in another order than F.linear; float32 values here are O(1)), at prefill, at decode with the
KV cache, and through generate() (greedy and beam search: token ids equal). The adapters are chosen to reach
every case of the layout: ranks 2/3/4/5/8 (3 and 5 are zero-padded into the 4 and 8 buckets), a lora_bias adapter,
scalings that are not powers of two, an adapter on some modules only, a DoRA adapter (run per adapter), a busy
adapter that takes several slots, a bucket used in part (gathered) and "__base__" rows.
"""
import pytest
import torch

import surgery
from surgery.methods.lora import mixed
from tests.support import tiny_models

ADAPTERS = {   # name: (r, alpha, target_modules, extra)
    "r2": (2, 2, ["q_proj", "k_proj", "v_proj", "o_proj"], {}),
    "r3": (3, 5, ["q_proj", "v_proj"], {}),
    "r4": (4, 8, "all-linear", {}),
    "r8b": (8, 4, ["q_proj", "k_proj", "v_proj", "o_proj"], {"lora_bias": True}),
    "r5": (5, 7, ["o_proj", "down_proj"], {}),
    "dora": (4, 8, ["q_proj", "v_proj"], {"use_dora": True}),
}
NAMES = ["r2", "r8b", "__base__", "r3", "r4", "r4", "r4", "dora"]
ATOL = 1e-5


def _build(lib, adapters=ADAPTERS, seed=0):
    model = None
    for name, (r, alpha, targets, extra) in adapters.items():
        config = lib.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, **extra)
        if model is None:
            model = lib.get_peft_model(tiny_models.tiny_llama(), config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():   # every adapter tensor non-trivial (B, the lora biases, DoRA magnitudes)
        for key, p in model.named_parameters():
            if "lora_" in key:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3 + ("magnitude" in key))
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return _build(surgery)


@pytest.fixture
def per_adapter_calls(monkeypatch):
    """The `only` argument of every per-adapter fallback call (None: the whole batch ran per adapter)."""
    calls, original = [], mixed.grouped_output

    def spy(layer, x, result, batch_adapters, only=None):
        calls.append(only)
        return original(layer, x, result, batch_adapters, only)
    monkeypatch.setattr(mixed, "grouped_output", spy)
    return calls


def _alone(model, x, name, **kwargs):
    if name == "__base__":
        with model.disable_adapter():
            return model(x, **kwargs)
    model.set_adapter(name)
    return model(x, **kwargs)


def _q_proj(model):
    return model.get_base_model().model.layers[0].self_attn.q_proj


@torch.inference_mode()
def test_prefill_rows_equal_each_sample_alone(model, per_adapter_calls):
    x = tiny_models.token_batch(batch=len(NAMES))
    out = model(x, adapter_names=NAMES).logits
    assert per_adapter_calls and all(only == {"dora"} for only in per_adapter_calls)   # only DoRA runs apart
    for i, name in enumerate(NAMES):
        torch.testing.assert_close(out[i], _alone(model, x[i:i + 1], name).logits[0], atol=ATOL, rtol=0)
    plan = _q_proj(model)._mixed_plan   # the bucketed path ran (not the per-adapter fallback)
    widths = sorted(part.At.shape[-1] for part in plan.parts)
    assert widths == [2, 4, 8] and plan.rest == {"dora"}
    busy = next(part for part in plan.parts if part.At.shape[-1] == 4)
    assert (busy.m, busy.C) == (3, 2)   # r3 + r4 x3 in the 4-bucket: 3 slots of 2 rows (r4 takes two), padded
    assert busy.take.tolist() == [3, 0, 4, 5, 6, 0] and busy.keep.tolist() == [0, 2, 3, 4]


@torch.inference_mode()
def test_decode_with_kv_cache_rows_equal_each_sample_alone(model, per_adapter_calls):
    from transformers import DynamicCache

    x = tiny_models.token_batch(batch=len(NAMES))
    step = torch.arange(len(NAMES)).view(-1, 1) + 3
    cache = model(x, adapter_names=NAMES, past_key_values=DynamicCache(), use_cache=True).past_key_values
    out = model(step, adapter_names=NAMES, past_key_values=cache, use_cache=True).logits
    assert out.shape[1] == 1 and all(only == {"dora"} for only in per_adapter_calls)
    for i, name in enumerate(NAMES):
        alone = _alone(model, x[i:i + 1], name, past_key_values=DynamicCache(), use_cache=True).past_key_values
        want = _alone(model, step[i:i + 1], name, past_key_values=alone, use_cache=True).logits
        torch.testing.assert_close(out[i], want[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("gen", [dict(), dict(num_beams=2)], ids=["greedy", "beams"])
def test_generate_equals_per_adapter_generate(model, gen):
    names = ["r8b", "__base__", "r3", "r4", "dora"]
    x = tiny_models.token_batch(batch=len(names))
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(x), **gen)
    out = model.generate(input_ids=x, adapter_names=names, **kwargs)
    for i, name in enumerate(names):
        kw = dict(kwargs, attention_mask=kwargs["attention_mask"][i:i + 1])
        if name == "__base__":
            with model.disable_adapter():
                alone = model.generate(input_ids=x[i:i + 1], **kw)
        else:
            model.set_adapter(name)
            alone = model.generate(input_ids=x[i:i + 1], **kw)
        assert torch.equal(out[i], alone[0]), name


def test_equals_peft_mixed_batch_prefill_and_decode():
    import peft
    from transformers import DynamicCache

    lora_only = {k: v for k, v in ADAPTERS.items() if k != "dora"}   # PEFT refuses DoRA in mixed batches
    ours, theirs = _build(surgery, lora_only), _build(peft, lora_only)
    ours.load_state_dict(theirs.state_dict())
    names = ["r4", "r2", "__base__", "r3", "r8b", "r5", "r4"]
    x = tiny_models.token_batch(batch=len(names))
    step = torch.arange(len(names)).view(-1, 1) + 5
    with torch.no_grad():
        out = []
        for m in (ours, theirs):
            pre = m(input_ids=x, adapter_names=names, past_key_values=DynamicCache(), use_cache=True)
            dec = m(input_ids=step, adapter_names=names, past_key_values=pre.past_key_values, use_cache=True)
            out.append((pre.logits, dec.logits))
    torch.testing.assert_close(out[0][0], out[1][0], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[0][1], out[1][1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("names", [["r4", "r3"], ["r3", "r4"]], ids=["permuted", "in-order"])
def test_every_adapter_once_reads_the_stacks_in_place(model, names, per_adapter_calls):
    _check_rows(model, tiny_models.token_batch(batch=2), names)   # the whole 4-bucket of q_proj, a row each
    layer = _q_proj(model)
    (part,) = layer._mixed_plan.parts
    assert part.At is layer._mixed_stacks.buckets[1][0]   # no gathered copy of the factors
    assert (part.take is None) == (names == ["r3", "r4"])   # rows already in bucket order: no gather either
    assert part.keep is None and not per_adapter_calls


def _check_rows(model, x, names):
    with torch.inference_mode():
        out = model(x, adapter_names=names).logits
        for i, name in enumerate(names):
            torch.testing.assert_close(out[i], _alone(model, x[i:i + 1], name).logits[0], atol=ATOL, rtol=0)
    return out


@pytest.mark.parametrize("change", ["in-place", "set_scale", "new storage", "replaced parameter", "new adapter"])
def test_the_cached_stacks_follow_adapter_changes(change, per_adapter_calls):
    model = _build(surgery, {k: ADAPTERS[k] for k in ("r2", "r4", "r8b")})
    names = ["r2", "r4", "r8b", "__base__"]
    x = tiny_models.token_batch(batch=len(names))
    before = _check_rows(model, x, names)
    layer = _q_proj(model)
    with torch.no_grad():
        if change == "in-place":
            layer.lora_B["r4"].weight.mul_(3)
        elif change == "set_scale":
            layer.set_scale("r4", 0.25)
        elif change == "new storage":   # `.data =` keeps the version counter: the storage tells
            layer.lora_A["r4"].weight.data = layer.lora_A["r4"].weight.data * -1
        elif change == "replaced parameter":
            layer.lora_B["r4"].weight = torch.nn.Parameter(layer.lora_B["r4"].weight * 2)
        else:
            model.add_adapter("r16", surgery.LoraConfig(r=16, target_modules=["q_proj"], init_lora_weights=False))
            names = ["r2", "r16", "r8b", "__base__"]
    after = _check_rows(model, x, names)
    assert (after[1] - before[1]).abs().max() > 1e-3   # the change shows (a stale cache would fail above)
    assert not per_adapter_calls


@pytest.mark.parametrize("inference", [True, False], ids=["inference-mode", "no-grad"])
def test_two_dimensional_inputs_and_a_tensor_scaling(model, inference, per_adapter_calls):
    """A layer called on (rows, in) (no sequence axis), and a hot-swap scaling tensor filled in place (an
    inference tensor has no version counter: the stacks are then rebuilt on every call)."""
    layer = _q_proj(model)
    x = torch.randn(4, layer.in_features)
    names = ("r3", "__base__", "r8b", "r3")
    with torch.inference_mode(inference):
        layer.scaling["r3"] = torch.tensor(0.5)
    try:
        with torch.inference_mode(inference), torch.no_grad():
            for value in (0.5, 2.0):
                layer.scaling["r3"].fill_(value)
                layer._batch_adapters = names
                out = layer(x)
                layer._batch_adapters = None
                for i, name in enumerate(names):
                    base = layer.base_layer(x[i:i + 1])
                    want = base if name == "__base__" else layer._adapter_output(x[i:i + 1], name, base)
                    torch.testing.assert_close(out[i:i + 1], want, atol=ATOL, rtol=0)
                assert not per_adapter_calls   # the bucketed path, not the per-adapter one
    finally:
        layer._batch_adapters = None
        layer.scaling["r3"] = 5 / 3


def test_half_precision_base_with_float32_adapters_equals_peft():
    """bf16 base, float32 factors (autocast_adapter_dtype): the delta is computed at float32 and rounded to bf16
    before the add, as PEFT's mixed batch does (tolerance: one bf16 step at |logits| < 1, 2^-8)."""
    import peft

    adapters = {k: ADAPTERS[k] for k in ("r3", "r4", "r8b")}
    models = []
    for lib in (surgery, peft):
        m = _build(lib, adapters).to(torch.bfloat16)
        for key, p in m.named_parameters():
            if "lora_" in key:
                p.data = p.data.float()
        models.append(m)
    models[0].load_state_dict(models[1].state_dict())
    assert _q_proj(models[0]).lora_A["r4"].weight.dtype == torch.float32
    names = ["r4", "__base__", "r8b", "r3", "r4"]
    x = tiny_models.token_batch(batch=len(names))
    with torch.no_grad():
        ours, theirs = (m(input_ids=x, adapter_names=names).logits for m in models)
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), theirs.float(), atol=2 ** -8, rtol=0)


def test_generate_after_an_adapter_update_reads_the_new_factors():
    """generate() skips the factor check between its own steps (one GenerationNames per call): a later call
    must still see an update made in between."""
    model = _build(surgery, {k: ADAPTERS[k] for k in ("r2", "r4")})
    names = ["r4", "r2"]
    x = tiny_models.token_batch(batch=2)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(x))
    before = model.generate(input_ids=x, adapter_names=names, **kwargs)
    with torch.no_grad():
        for layer in (m for m in model.modules() if hasattr(m, "lora_B") and "r4" in m.lora_B):
            layer.lora_B["r4"].weight.mul_(-4)
    out = model.generate(input_ids=x, adapter_names=names, **kwargs)
    assert not torch.equal(out[0], before[0]) and torch.equal(out[1], before[1])   # the update shows, r2's not
    model.set_adapter("r4")
    alone = model.generate(input_ids=x[:1], **dict(kwargs, attention_mask=kwargs["attention_mask"][:1]))
    assert torch.equal(out[0], alone[0])


@torch.inference_mode()
def test_gpt2_conv1d_base_rows_equal_each_sample_alone():
    """transformers' Conv1D stores (in, out) (fan_in_fan_out): the factors are still nn.Linear-shaped."""
    model = surgery.get_peft_model(tiny_models.tiny_gpt2(), surgery.LoraConfig(
        r=3, target_modules=["c_attn", "c_proj"], init_lora_weights=False, fan_in_fan_out=True), adapter_name="a")
    model.add_adapter("b", surgery.LoraConfig(r=8, target_modules=["c_attn"], init_lora_weights=False,
                                              fan_in_fan_out=True))
    model.eval()
    names = ["b", "a", "__base__", "a"]
    x = tiny_models.token_batch(batch=len(names))
    out = model(x, adapter_names=names).logits
    for i, name in enumerate(names):
        torch.testing.assert_close(out[i], _alone(model, x[i:i + 1], name).logits[0], atol=ATOL, rtol=0)
