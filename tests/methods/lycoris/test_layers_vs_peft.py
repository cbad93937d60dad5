"""LoHa and LoKr layers against peft, per base layer type PEFT wraps (Linear, Conv1d, Conv2d; flat and CP
kernels, a grouped strided conv, a 1x1 conv), on the same weights.

Tolerances: eval outputs and merged weights are bit-identical (PEFT's op order, asserted with torch.equal);
training outputs within 1e-5 and every gradient (adapter parameters and the input) within 1e-5 relative to its
largest entry (absolute when that is below 1): the training path multiplies by factored forms instead of
forming ΔW, and autograd differentiates what PEFT's hand-written backward does; float32 rounding only.
"""
from __future__ import annotations

import copy

import peft
import pytest
import torch

import surgery
from surgery.errors import MergeError
from tests.support.helpers import max_diff

from .pairs import adapter_grads, adapter_layer, base_weight, inputs, pair, perturb, set_factor

CASES = [
    # (config class, base layer kind, config kwargs)
    ("LoHaConfig", "linear", dict(r=2)),              # factored training path (r² (in + out) < in out)
    ("LoHaConfig", "linear", dict(r=8, alpha=3)),     # dense training path
    ("LoHaConfig", "linear_bias_free", dict(r=3, init_weights=False)),
    ("LoHaConfig", "conv2d", dict(r=2)),
    ("LoHaConfig", "conv2d", dict(r=3, use_effective_conv2d=True)),
    ("LoHaConfig", "conv2d_1x1", dict(r=2, use_effective_conv2d=True)),   # 1x1: PEFT flattens, no CP
    ("LoHaConfig", "conv2d_grouped_strided", dict(r=2, use_effective_conv2d=True)),
    ("LoHaConfig", "conv1d", dict(r=2)),
    ("LoHaConfig", "conv1d", dict(r=2, use_effective_conv2d=True)),
    ("LoKrConfig", "linear", dict(r=2)),              # low-rank W2
    ("LoKrConfig", "linear", dict(r=1, decompose_both=True, alpha=2)),
    ("LoKrConfig", "linear", dict(r=8, decompose_factor=4)),   # full W2, factor 4: (4, 16) / (4, 12)
    ("LoKrConfig", "linear_bias_free", dict(r=16, init_weights="lycoris")),
    ("LoKrConfig", "conv2d", dict(r=1)),
    ("LoKrConfig", "conv2d", dict(r=1, use_effective_conv2d=True)),
    ("LoKrConfig", "conv2d", dict(r=8)),              # full 4-d W2
    ("LoKrConfig", "conv2d_1x1", dict(r=1, use_effective_conv2d=True)),
    ("LoKrConfig", "conv2d_grouped_strided", dict(r=1, decompose_both=True)),
    ("LoKrConfig", "conv1d", dict(r=1)),
    ("LoKrConfig", "conv1d", dict(r=4)),              # full 3-d W2: torch.kron's (a, c) ⊗ (b, d, k) layout
]
IDS = [f"{c.removesuffix('Config')}-{k}-" + "-".join(f"{a}={v}" for a, v in kw.items()) for c, k, kw in CASES]


@pytest.mark.parametrize("config, kind, kwargs", CASES, ids=IDS)
def test_eval_forward_is_bit_identical_to_peft(config, kind, kwargs):
    ours, theirs, base = pair(kind, config, **kwargs)
    x = inputs(kind)
    with torch.no_grad():
        got, want, plain = ours(x), theirs(x), base(x)
    assert torch.equal(got, want)
    assert max_diff(got, plain) > 1e-3   # the adapter does something


def peft_wrong_grads(model) -> tuple[str, ...]:
    """PEFT's hand-written backward of LoHa's CP product (HadaWeightCP) contracts W1a's gradient with the
    second product's factors and vice versa: wrong for hada_w1_a / hada_w2_a (surgery's are autograd's;
    tests/methods/loha checks them against float64 autograd and shows PEFT's failing gradcheck)."""
    layer = adapter_layer(model)
    return ("hada_w1_a", "hada_w2_a") if getattr(layer, "is_cp", lambda n: False)("default") else ()


@pytest.mark.parametrize("config, kind, kwargs", CASES, ids=IDS)
def test_training_forward_and_gradients_match_peft(config, kind, kwargs):
    ours, theirs, _ = pair(kind, config, rank_dropout=0.25, module_dropout=0.2, **kwargs)
    x = inputs(kind)
    ran = 0
    for seed in range(1, 6):   # seeded: both draw the same module- and rank-dropout numbers
        out_ours, grads_ours = adapter_grads(ours, x, seed)
        out_theirs, grads_theirs = adapter_grads(theirs, x, seed)
        assert max_diff(out_ours, out_theirs) <= 1e-5
        assert set(grads_ours) == set(grads_theirs) and len(grads_ours) > 1
        for name, grad in grads_ours.items():
            if name.split(".")[-2:][0] in peft_wrong_grads(ours):
                continue
            if grad is None:   # module-dropped in both
                assert grads_theirs[name] is None, name
            else:
                scale = max(1.0, grads_theirs[name].abs().max().item())
                assert max_diff(grad, grads_theirs[name]) <= 1e-5 * scale, (name, scale)
        ran += all(g is not None for g in grads_ours.values())
    assert ran >= 2   # most forwards ran the adapter (module_dropout 0.2)


@pytest.mark.parametrize("config, kind, kwargs", CASES, ids=IDS)
def test_merge_unmerge_and_safe_merge_equal_peft(config, kind, kwargs):
    ours, theirs, _ = pair(kind, config, **kwargs)
    x = inputs(kind)
    original = base_weight(ours).clone()
    with torch.no_grad():
        adapted = ours(x)
    for safe in (False, True):
        ours.merge_adapter(safe_merge=safe)
        theirs.merge_adapter(safe_merge=safe)
        assert torch.equal(base_weight(ours), base_weight(theirs))
        with torch.no_grad():
            assert max_diff(ours(x), adapted) <= 1e-5
        ours.unmerge_adapter()
        theirs.unmerge_adapter()
        assert max_diff(base_weight(ours), original) <= 1e-6
    merged = copy.deepcopy(ours).merge_and_unload()
    with torch.no_grad():
        assert max_diff(merged(x), adapted) <= 1e-5
    assert torch.equal(merged.layer.weight, copy.deepcopy(theirs).merge_and_unload().layer.weight)


@pytest.mark.parametrize("config", ["LoHaConfig", "LoKrConfig"])
@pytest.mark.parametrize("kind", ["linear", "conv2d", "conv1d"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_safe_merge_refuses_non_finite_and_leaves_the_layer_untouched(config, kind, bad):
    ours, _, _ = pair(kind, config, r=2)
    set_factor(ours, bad)
    before = base_weight(ours).clone()
    with pytest.raises(MergeError, match="NaN/inf"):
        ours.merge_adapter(safe_merge=True)
    assert torch.equal(base_weight(ours), before) and not adapter_layer(ours).merged
    with pytest.raises(MergeError, match="NaN/inf"):
        adapter_layer(ours).merge(safe_merge=True)   # the layer's own safe merge, too
    assert torch.equal(base_weight(ours), before) and not adapter_layer(ours).merged


@pytest.mark.parametrize("config, kind, kwargs", CASES[:3] + CASES[9:12], ids=IDS[:3] + IDS[9:12])
def test_disabled_adapters_give_the_base_output_bit_for_bit(config, kind, kwargs):
    ours, _, base = pair(kind, config, **kwargs)
    x = inputs(kind)
    with torch.no_grad():
        with ours.disable_adapter():
            assert torch.equal(ours(x), base(x))
        ours.merge_adapter()
        with ours.disable_adapter():       # disabling a merged layer unmerges it first
            assert max_diff(ours(x), base(x)) <= 1e-6
        assert not adapter_layer(ours).merged


@pytest.mark.parametrize("config", ["LoHaConfig", "LoKrConfig"])
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_two_adapters_active_on_one_layer_equal_peft(config, kind):
    ours, theirs, _ = pair(kind, config, r=2)
    ours.add_adapter("other", getattr(surgery, config)(target_modules=["layer"], r=1, alpha=3))
    theirs.add_adapter("other", getattr(peft, config)(target_modules=["layer"], r=1, alpha=3))
    perturb(ours, "other", seed=3)
    peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours, adapter_name="other"),
                                   adapter_name="other")
    for model in (ours, theirs):
        adapter_layer(model).set_adapter(["default", "other"])
    x = inputs(kind)
    with torch.no_grad():
        both = ours(x)
        assert torch.equal(both, theirs(x))
    ours.merge_adapter(["default", "other"])
    theirs.merge_adapter(["default", "other"])
    assert torch.equal(base_weight(ours), base_weight(theirs))
    with torch.no_grad():
        assert max_diff(ours(x), both) <= 1e-5
    ours.unmerge_adapter()
    adapter_layer(ours).delete_adapter("other")
    assert "other" not in adapter_layer(ours).adapter_names()
    assert not any(".other" in n for n, _ in ours.named_parameters())
