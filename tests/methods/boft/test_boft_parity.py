"""BOFT layers against peft on the same weights: outputs, adapter gradients, state-dict keys and shapes,
trainable parameters and the printed trainable-parameter line (also as the plan predicts it)."""
from __future__ import annotations

import pytest
import torch

import surgery
from tests.support.helpers import MODELS, max_diff, printed_line, run

from .pairs import boft_layers, pair, perturb_boft

pytest.importorskip("peft")

# (model, BOFTConfig kwargs): every base layer type peft's BOFT wraps (nn.Linear, nn.Conv2d)
CASES = [
    ("llama", dict(target_modules=["q_proj", "v_proj", "down_proj"], boft_block_size=4)),
    ("llama_bias", dict(target_modules=["q_proj", "o_proj", "up_proj"], boft_block_size=0, boft_block_num=8,
                        bias="boft_only")),
    ("bert", dict(target_modules=["query", "value", "intermediate.dense"], boft_block_size=8)),
    ("t5", dict(target_modules=["q", "v", "wo"], boft_block_size=16, task_type="SEQ_2_SEQ_LM")),
    ("conv", dict(target_modules=["conv2d", "conv2d_strided"], boft_block_size=9)),
    ("conv", dict(target_modules=["conv2d", "conv2d_strided", "head"], boft_block_size=0, boft_block_num=1)),
    ("embedding", dict(target_modules=["lin0", "lin1"], boft_block_size=2)),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


def _loss(model, name):
    _, make_inputs, call = MODELS[name]
    out = call(model, make_inputs())
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)   # not symmetric: every output counts
    return (out * weights).sum()


@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_outputs_equal_peft(name, kwargs):
    ours, theirs = pair(name, **kwargs)
    ours.eval(), theirs.eval()
    got = run(ours, name)
    assert max_diff(got, run(theirs, name)) <= 1e-6
    assert max_diff(got, run(MODELS[name][0](), name)) > 1e-3   # the adapter is not the identity


@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_adapter_gradients_equal_peft(name, kwargs):
    """One backward (eval mode: the base models' own dropout draws would differ): every trainable parameter's
    gradient within 1e-5 of peft's (float32, relative to the gradient's size when it exceeds 1)."""
    ours, theirs = pair(name, **kwargs)
    ours.eval(), theirs.eval()
    _loss(ours, name).backward()
    _loss(theirs, name).backward()
    mine = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    want = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    assert set(mine) == set(want)
    assert any(".boft_R." in n for n in mine) and any(".boft_s." in n for n in mine)
    for key, grad in want.items():
        assert grad is not None and grad.abs().max() > 0, key
        assert max_diff(mine[key], grad) <= 1e-5 * max(1.0, grad.abs().max().item()), key


@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
def test_keys_shapes_and_trainable_line_equal_peft(name, kwargs):
    ours, theirs = pair(name, **kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())   # the same keys in the same order
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
        n for n, p in theirs.named_parameters() if p.requires_grad}
    line = printed_line(theirs)
    assert printed_line(ours) == line
    assert surgery.plan(MODELS[name][0](), surgery.BOFTConfig(**kwargs)).totals_line() == line


def test_checkpoint_layout_is_peft_s():
    """Saved keys drop the adapter name; R is (1, D, b, b) (peft's CPU path), s is (out, 1) for Linear and
    (1, out) for Conv2d; no permutation buffer is saved (peft's boft_P is not persistent)."""
    ours, _ = pair("conv", target_modules=["conv2d", "head"], boft_block_size=0, boft_block_num=1)
    state = surgery.get_peft_model_state_dict(ours)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "base_model.model.conv2d.boft_R": (1, 1, 27, 27), "base_model.model.conv2d.boft_s": (1, 8),
        "base_model.model.head.boft_R": (1, 1, 8, 8), "base_model.model.head.boft_s": (5, 1)}


def test_two_active_adapters_compose_as_peft():
    """Both adapters active on every layer: rotations multiply in activation order, scales multiply."""
    kwargs = dict(target_modules=["q_proj", "v_proj"], boft_block_size=4)
    ours, theirs = pair("llama", **kwargs)
    second = dict(target_modules=["q_proj", "v_proj"], boft_block_size=0, boft_block_num=2)
    ours.add_adapter("other", surgery.BOFTConfig(**second))
    perturb_boft(ours, seed=5, adapter="other")
    import peft

    theirs.add_adapter("other", peft.BOFTConfig(**second))
    peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours, adapter_name="other"),
                                   adapter_name="other")
    for model in (ours, theirs):
        for layer in boft_layers(model).values():
            layer.set_adapter(["default", "other"])
    ours.eval(), theirs.eval()
    got = run(ours, "llama")
    assert max_diff(got, run(theirs, "llama")) <= 1e-6
    for layer in boft_layers(ours).values():
        layer.set_adapter(["other", "default"])     # the other order is a different rotation
    assert max_diff(run(ours, "llama"), got) > 1e-4


def test_init_weights_false_draws_peft_s_values():
    """init_weights=False: R ~ N(0, 0.1) then s ~ N(1, 0.1), drawn in peft's order from the global generator."""
    from .pairs import peft_boft

    kwargs = dict(target_modules=["q_proj", "down_proj"], boft_block_size=4, init_weights=False)
    torch.manual_seed(7)
    ours = surgery.get_peft_model(MODELS["llama"][0](), surgery.BOFTConfig(**kwargs))
    torch.manual_seed(7)
    theirs = peft_boft(MODELS["llama"][0](), **kwargs)
    mine, want = ours.state_dict(), theirs.state_dict()
    for key in (k for k in want if ".boft_" in k):
        assert torch.equal(mine[key], want[key]), key
    s = [v for k, v in mine.items() if ".boft_s." in k][0]
    assert 0.6 < s.mean() < 1.4 and s.std() > 0.02
