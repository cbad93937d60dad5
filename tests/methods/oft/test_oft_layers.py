"""OFT layers against PEFT on the same weights, per base layer type: outputs, input and adapter gradients,
disable, and the variants (exact Cayley, Neumann terms, COFT, block_share, r instead of a block size)."""
from __future__ import annotations

import pytest
import torch

from tests.support.helpers import max_diff

from .pairs import adapter_grads, inputs, pair

pytest.importorskip("peft")

# (layer kind, OFTConfig kwargs); fp32 tolerance 1e-5 on outputs and gradients
CASES = [
    ("linear", dict(oft_block_size=4)),
    ("linear", dict(r=2, oft_block_size=0)),
    ("linear", dict(oft_block_size=8, use_cayley_neumann=False)),
    ("linear", dict(oft_block_size=4, num_cayley_neumann_terms=1)),
    ("linear", dict(oft_block_size=4, num_cayley_neumann_terms=2)),
    ("linear", dict(oft_block_size=4, num_cayley_neumann_terms=3)),
    ("linear", dict(oft_block_size=4, num_cayley_neumann_terms=8)),
    ("linear", dict(oft_block_size=4, block_share=True)),
    ("linear", dict(oft_block_size=8, coft=True, eps=0.05)),
    ("linear", dict(oft_block_size=16, coft=True, eps=1e-3, block_share=True, use_cayley_neumann=False)),
    ("linear", dict(oft_block_size=1)),
    ("linear_bias_free", dict(oft_block_size=6)),
    ("conv1x1", dict(oft_block_size=4)),
    ("conv1x1", dict(r=2, oft_block_size=0, use_cayley_neumann=False)),
    ("conv3x3", dict(oft_block_size=9)),
    ("conv3x3", dict(oft_block_size=6, block_share=True)),
    ("embedding", dict(oft_block_size=4)),
    ("embedding", dict(r=2, oft_block_size=0, coft=True, eps=0.1)),
]
IDS = [f"{kind}-{i}" for i, (kind, _) in enumerate(CASES)]


@pytest.mark.parametrize("kind, config", CASES, ids=IDS)
def test_forward_and_gradients_equal_peft(kind, config):
    ours, theirs = pair(kind, **config)
    x = inputs(kind)
    results = []
    for model in (ours, theirs):
        model.train()
        xi = x.clone().requires_grad_(x.is_floating_point())
        out = model(xi)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        results.append((out.detach(), xi.grad, adapter_grads(model)))
    (out_a, gx_a, g_a), (out_b, gx_b, g_b) = results
    assert max_diff(out_a, out_b) <= 1e-5
    if gx_a is not None:
        assert max_diff(gx_a, gx_b) <= 1e-5
    # a block of 1 has no parameter and a one-term series is I: PEFT gives those a zero or empty gradient
    trivial = config.get("oft_block_size") == 1 or config.get("num_cayley_neumann_terms") == 1
    g_b = {k: g for k, g in g_b.items() if g.numel() and g.abs().max() > 0}
    assert set(g_a) == set(g_b) and bool(g_a) != trivial
    for key in g_a:
        assert max_diff(g_a[key], g_b[key]) <= 1e-5, key
        assert g_a[key].abs().max() > 1e-4   # not trivially zero


@pytest.mark.parametrize("kind", ["linear", "conv1x1", "embedding"])
def test_disable_is_bit_identical_to_the_base(kind):
    ours, _ = pair(kind, oft_block_size=4)
    x = inputs(kind)
    with torch.no_grad():
        base_out = ours.get_base_model().layer.base_layer(x)
        with ours.disable_adapter():
            assert torch.equal(ours(x), base_out)
        assert not torch.equal(ours(x), base_out)


@pytest.mark.parametrize("kind", ["linear", "conv1x1", "embedding"])
def test_fresh_adapter_is_the_identity(kind):
    import surgery

    from .pairs import base_model
    model = base_model(kind)
    x = inputs(kind)
    with torch.no_grad():
        want = model(x)
        got = surgery.get_peft_model(model, surgery.OFTConfig(target_modules=["layer"], oft_block_size=4))(x)
    assert max_diff(got, want) <= 1e-6


def test_conv3x3_is_not_the_identity_at_init_as_in_peft():
    """PEFT's patch unfold/fold on a k > 1 kernel changes the input even with identity rotations."""
    ours, theirs = pair("conv3x3", oft_block_size=9, init_weights=True)
    for model in (ours, theirs):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "oft_" in name:
                    p.zero_()
    x = inputs("conv3x3")
    with torch.no_grad():
        got, want = ours(x), theirs(x)
        base_out = ours.get_base_model().layer.base_layer(x)
    assert max_diff(got, want) <= 1e-6
    assert max_diff(got, base_out) > 1e-2


def test_init_weights_false_is_normal_with_std_0_1():
    import surgery

    from .pairs import base_model
    torch.manual_seed(0)
    model = surgery.get_peft_model(base_model("linear"), surgery.OFTConfig(target_modules=["layer"], oft_block_size=8,
                                                                           init_weights=False))
    weight = model.base_model.model.layer.oft_R["default"].weight
    assert weight.shape == (2, 28)
    assert 0.05 < weight.std().item() < 0.15 and abs(weight.mean().item()) < 0.05


def test_coft_keeps_each_block_within_its_radius_and_repeated_forwards_identical():
    ours, _ = pair("linear", oft_block_size=8, coft=True, eps=0.05)
    x = inputs("linear")
    with torch.no_grad():
        first = ours(x)
        weight = ours.base_model.model.layer.oft_R["default"].weight
        radius = 0.05 / 2 ** 0.5       # eps / sqrt(2 blocks)
        assert ((weight.norm(dim=1) * 2 ** 0.5) <= radius * (1 + 1e-5)).all()
        assert all(torch.equal(ours(x), first) for _ in range(3))


def test_a_training_step_on_llama_equals_peft():
    """Loss and every adapter gradient of a causal-LM step on the tiny Llama (all linear layers), 1e-5."""
    import warnings

    import peft

    import surgery
    from tests.support import tiny_models as tm

    from .pairs import perturb
    config = dict(target_modules="all-linear", oft_block_size=8)
    ours = surgery.get_peft_model(tm.tiny_llama(), surgery.OFTConfig(**config)).train()
    perturb(ours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(tm.tiny_llama(), peft.OFTConfig(**config)).train()
        peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours))
    batch = tm.token_batch()
    losses = [m(input_ids=batch, labels=batch).loss for m in (ours, theirs)]
    for loss in losses:
        loss.backward()
    assert abs(losses[0].item() - losses[1].item()) <= 1e-6
    g_a, g_b = adapter_grads(ours), adapter_grads(theirs)
    assert set(g_a) == set(g_b) and len(g_a) == 14
    assert max(max_diff(g_a[k], g_b[k]) for k in g_a) <= 1e-5
