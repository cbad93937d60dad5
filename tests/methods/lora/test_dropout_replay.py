"""The replayed LoRA dropout (methods/lora/dropout.py and the fused nodes) against F.dropout, autograd and PEFT.

Both ways of keeping the mask are run on the CPU: its bits (the CPU default) and the generator state (the CUDA
default). Tolerances: the mask rebuilt in backward and x_d are bit-identical to F.dropout's (same draw, same
ops), and the generator is left exactly where nn.Dropout leaves it. Gradients against autograd on the same
mask: 1e-6 of the largest entry (float32, one layer); float64 gradcheck: torch's defaults. Training against
PEFT (same seed, so the same masks): losses and adapter weights within 1e-5 over three AdamW steps (the fused
GEMMs round differently from PEFT's separate ops; another mask moves the loss by more than 1e-4, checked too).
Keep-rate: a 5-sigma binomial bound.
"""
from __future__ import annotations

import copy
import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgery
import surgery.methods.lora.dropout as dropout_module
import surgery.methods.lora.fused as fused
import surgery.methods.lora.fused_dora as fused_dora
from surgery.methods.lora.dropout import _DroppedLinear, draw, dropout_p, replay
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff, peft_model, perturb_adapters


@pytest.fixture(params=["bits", "replay"])
def mode(request, monkeypatch):
    """Both ways a node keeps the mask, on the CPU: its bits (the CPU default) or the generator state (CUDA's
    default, run here on the CPU generator)."""
    monkeypatch.setitem(dropout_module.REPLAY, "cpu", request.param == "replay")
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", [(512, 512), (512, 1376), (7, 33), (2, 16, 64)])
def test_draw_and_replay_are_bit_identical_to_f_dropout_and_leave_the_stream(dtype, shape, mode):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    torch.manual_seed(3)
    want = F.dropout(x, 0.05, True)
    after = torch.get_rng_state()
    torch.manual_seed(3)
    x_d, drop, bits = draw(x, 0.05)
    assert torch.equal(x_d, want) and torch.equal(torch.get_rng_state(), after)
    assert (bits is None) == (mode == "replay")
    if bits is not None:
        assert bits.dtype == torch.uint8 and bits.numel() == math.ceil(x.numel() / 8)   # 1 bit per element
    torch.manual_seed(99)                  # the generator has moved on by backward time
    moved = torch.get_rng_state()
    again, back = replay(x, drop, bits)
    assert torch.equal(again, want)
    assert torch.equal(torch.get_rng_state(), moved)   # left where it was
    g = torch.randn(shape).to(dtype)
    x_ref = x.clone().requires_grad_()
    torch.manual_seed(3)
    F.dropout(x_ref, 0.05, True).backward(g)
    assert torch.equal(back(g.clone()), x_ref.grad)   # autograd's dropout backward, bit for bit


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_fused_node_mask_has_the_keep_rate_and_scale_of_nn_dropout(p):
    """A layer whose output is x_d itself (W = 0, A = B = I, s = 1): the node's mask, read off its output."""
    n = 256
    layer = nn.Linear(n, n, bias=False)
    model = surgery.get_peft_model(nn.Sequential(layer), surgery.LoraConfig(target_modules=["0"], r=n, lora_alpha=n,
                                                                              lora_dropout=p))
    lora = model.base_model.model[0]
    with torch.no_grad():
        lora.base_layer.weight.zero_()
        lora.lora_A["default"].weight.copy_(torch.eye(n))
        lora.lora_B["default"].weight.copy_(torch.eye(n))
    model.train()
    x = torch.rand(64, n) + 0.5                 # no zeros: a zero output is a dropped element
    calls = []
    original = fused._LoraLinear.apply
    fused._LoraLinear.apply = lambda *a: calls.append(a[-1]) or original(*a)
    try:
        torch.manual_seed(0)
        out1, out2 = model(x), model(x)
    finally:
        fused._LoraLinear.apply = original
    assert calls == [p, p]                                     # the fused node drew the masks itself
    kept = out1 != 0
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
    assert torch.equal(out1[kept], x[kept] * scale)          # kept: x / (1 - p), as F.dropout scales
    trials, keep = kept.numel(), 1 - p
    sigma = math.sqrt(trials * keep * (1 - keep))
    assert abs(kept.sum().item() - trials * keep) < 5 * sigma
    assert not torch.equal(out1 != 0, out2 != 0)             # the stream moved on: a fresh mask
    torch.manual_seed(0)
    assert torch.equal(out1, F.dropout(x, p, True))          # and it is nn.Dropout's own mask


def _reference_lora(x, weight, bias, A, B, s, p):
    return F.linear(x, weight, bias) + s * F.linear(F.linear(F.dropout(x, p, True), A), B)


@pytest.mark.parametrize("with_bias", [False, True])
def test_lora_node_gradients_equal_autograd_on_the_same_mask(with_bias, mode):
    g = torch.Generator().manual_seed(0)
    x, weight, A, B = (torch.randn(*s, generator=g) for s in ((40, 24), (16, 24), (4, 24), (16, 4)))
    bias = torch.randn(16, generator=g) if with_bias else None
    leaves = [t.requires_grad_() for t in (x, weight, A, B) + ((bias,) if with_bias else ())]
    grad_out = torch.randn(40, 16, generator=g)
    results = []
    for run in (lambda: fused._LoraLinear.apply(x, weight, bias, A, B, 0.7, None, 0.3),
                lambda: _reference_lora(x, weight, bias, A, B, 0.7, 0.3)):
        torch.manual_seed(5)
        out = run()
        grads = torch.autograd.grad(out, leaves, grad_out)
        results.append((out, grads))
    (out, grads), (ref, ref_grads) = results
    assert max_diff(out, ref) <= 1e-6 * ref.abs().max()
    for got, want in zip(grads, ref_grads):
        assert max_diff(got, want) <= 1e-6 * want.abs().max()


def _seeded(fn):
    """gradcheck calls fn many times: the same seed each time keeps one mask."""
    def call(*t):
        torch.manual_seed(11)
        return fn(*t)
    return call


def _double(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_()


def test_replayed_nodes_match_finite_differences(mode):
    x, weight, A, B = _double(6, 5), _double(4, 5, seed=1), _double(3, 5, seed=2), _double(4, 3, seed=3)
    bias, m = _double(4, seed=4), _double(4, seed=5)
    norm = _double(4, seed=6).detach().abs() + 0.5
    assert torch.autograd.gradcheck(_seeded(lambda *t: fused._LoraLinear.apply(*t, 0.8, None, 0.4)),
                                    (x, weight, bias, A, B))
    assert torch.autograd.gradcheck(_seeded(lambda *t: fused._DoraDropLinear.apply(*t, norm, 0.8, 0.4)),
                                    (x, weight, bias, A, B, m))
    assert torch.autograd.gradcheck(_seeded(lambda *t: _DroppedLinear.apply(*t, 0.4)), (x, A))


def test_eval_mode_and_trl_disable_dropout_draw_nothing_and_drop_nothing():
    from trl.trainer.utils import disable_dropout_in_model

    kwargs = dict(target_modules="all-linear", r=4, lora_alpha=8)
    base = tm.tiny_llama()
    dropped = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(lora_dropout=0.3, **kwargs))
    perturb_adapters(dropped, biases=False)
    plain = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**kwargs))
    plain.load_state_dict(dropped.state_dict())
    inputs = tm.token_batch()
    with torch.no_grad():
        want = plain.eval()(input_ids=inputs).logits
        state = torch.get_rng_state()
        assert torch.equal(dropped.eval()(input_ids=inputs).logits, want)
        assert torch.equal(torch.get_rng_state(), state)
    dropped.train()
    disable_dropout_in_model(dropped)           # TRL: every nn.Dropout's p = 0, read at forward time
    layer = dropped.get_base_model().model.layers[0].self_attn.q_proj
    assert type(layer.lora_dropout["default"]) is nn.Dropout and layer.lora_dropout["default"].p == 0
    assert dropout_p(layer.lora_dropout["default"], inputs.float()) == 0.0
    state = torch.get_rng_state()
    out = dropped(input_ids=inputs).logits
    assert torch.equal(torch.get_rng_state(), state)        # nothing drawn
    assert max_diff(out, plain.train()(input_ids=inputs).logits) < 1e-6


def _steps(model, inputs, n=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    losses = []
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, torch.get_rng_state()


@pytest.mark.parametrize("checkpointing", [None, "reentrant", "non_reentrant"])
def test_training_with_dropout_follows_peft_step_for_step(checkpointing, mode):
    kwargs = dict(target_modules="all-linear", r=4, lora_alpha=8, lora_dropout=0.05)
    base = tm.tiny_llama()
    theirs = peft_model(base, **kwargs)
    perturb_adapters(theirs, biases=False)
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**kwargs))
    ours.load_state_dict(theirs.state_dict())
    other = copy.deepcopy(ours)
    for model in (ours, theirs, other):
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": checkpointing == "reentrant"})
            model.enable_input_require_grads()
    inputs = tm.token_batch()
    (ours_losses, ours_state), (theirs_losses, theirs_state) = _steps(ours, inputs), _steps(theirs, inputs)
    assert torch.equal(ours_state, theirs_state)       # the same number of draws, in the same order
    assert max(abs(a - b) for a, b in zip(ours_losses, theirs_losses)) < 1e-5
    theirs_state_dict = theirs.state_dict()
    for key, value in ours.state_dict().items():
        if "lora_" in key:
            assert max_diff(value, theirs_state_dict[key]) < 1e-5, key
    torch.manual_seed(1)                                # another seed: other masks, visibly other losses
    other_losses = [other(input_ids=inputs, labels=inputs).loss.item()]
    assert abs(other_losses[0] - theirs_losses[0]) > 1e-4


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_dora_with_dropout_under_checkpointing_follows_peft(use_reentrant):
    kwargs = dict(target_modules="all-linear", r=4, lora_alpha=8, lora_dropout=0.1, use_dora=True)
    base = tm.tiny_llama()
    theirs = peft_model(base, **kwargs)
    perturb_adapters(theirs, biases=False)
    ours = surgery.get_peft_model(copy.deepcopy(base), surgery.LoraConfig(**kwargs))
    ours.load_state_dict(theirs.state_dict())
    for model in (ours, theirs):
        model.train()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        model.enable_input_require_grads()
    inputs = tm.token_batch()
    kept = []   # whether each fused DoRA-dropout forward keeps z for backward (no recomputing GEMM there)
    original = fused_dora._DoraDropLinear.forward

    def recorded(ctx, *args):
        save = ctx.save_for_backward
        ctx.save_for_backward = lambda *tensors: (kept.append(tensors[-1] is not None), save(*tensors))
        return original(ctx, *args)
    with mock.patch.object(fused_dora._DoraDropLinear, "forward", staticmethod(recorded)):
        (ours_losses, ours_state), (theirs_losses, theirs_state) = _steps(ours, inputs), _steps(theirs, inputs)
    assert kept and all(kept)    # checkpoint's forwards keep z: no extra GEMM in backward
    assert torch.equal(ours_state, theirs_state)
    assert max(abs(a - b) for a, b in zip(ours_losses, theirs_losses)) < 1e-5
    theirs_state_dict = theirs.state_dict()
    for key, value in ours.state_dict().items():
        if "lora_" in key:
            assert max_diff(value, theirs_state_dict[key]) < 1e-5, key
