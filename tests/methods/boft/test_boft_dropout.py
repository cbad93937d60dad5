"""Multiplicative dropout: while training, int(p * D) blocks become the identity; surgery draws them from the
global generator in peft's order, so a seeded training forward equals peft's (Linear and Conv2d)."""
from __future__ import annotations

import pytest
import torch

from tests.support.helpers import MODELS, max_diff, run

from .pairs import boft_layers, pair

pytest.importorskip("peft")

CASES = [
    ("llama", dict(target_modules=["q_proj", "v_proj"], boft_block_size=4, boft_dropout=0.5)),
    ("conv", dict(target_modules=["conv2d", "conv2d_strided"], boft_block_size=9, boft_dropout=0.4)),
]


def _no_model_dropout(model):
    """Training mode for the adapters only: the base model's own dropout would draw from the generator too."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()


@pytest.mark.parametrize("name, kwargs", CASES, ids=[c[0] for c in CASES])
def test_seeded_training_forward_and_gradients_equal_peft(name, kwargs):
    ours, theirs = pair(name, **kwargs)
    _, make_inputs, call = MODELS[name]
    outs = []
    for model in (ours, theirs):
        _no_model_dropout(model)
        torch.manual_seed(11)
        out = call(model, make_inputs())
        out.pow(2).sum().backward()
        outs.append(out.detach())
    assert max_diff(*outs) <= 1e-6
    ours.eval()
    assert max_diff(outs[0], run(ours, name)) > 1e-4          # dropout did change the training forward
    grads = [{n: p.grad for n, p in m.named_parameters() if ".boft_R." in n} for m in (ours, theirs)]
    assert all(max_diff(grads[0][k], g) <= 1e-5 for k, g in grads[1].items())


@pytest.mark.parametrize("name, kwargs", CASES, ids=[c[0] for c in CASES])
def test_dropped_blocks_get_no_gradient(name, kwargs):
    ours, _ = pair(name, **kwargs)
    _no_model_dropout(ours)
    torch.manual_seed(0)
    _, make_inputs, call = MODELS[name]
    call(ours, make_inputs()).pow(2).sum().backward()
    for layer in boft_layers(ours).values():
        grad = layer.boft_R["default"].grad[0]                # (D, b, b): one factor
        blocks = grad.shape[0]
        silent = int((grad.flatten(1).abs().sum(1) == 0).sum())
        assert silent == int(kwargs["boft_dropout"] * blocks), (blocks, silent)


def test_eval_mode_has_no_dropout():
    kwargs = dict(target_modules=["q_proj", "v_proj"], boft_block_size=4)
    plain, _ = pair("llama", **kwargs)
    dropped, _ = pair("llama", boft_dropout=0.9, **kwargs)
    plain.eval(), dropped.eval()
    assert torch.equal(run(plain, "llama"), run(dropped, "llama"))
