"""Module dropout and rank dropout (training-time randomness) against peft: eval ignores them, training draws
PEFT's random numbers in PEFT's order (so a seeded run drops what PEFT drops and leaves the generator where
PEFT leaves it), module_dropout=1 gives the base output, and the rank mask has one entry per output row
(LoHa: divided by its mean; LoKr: 0/1, divided by its mean only with rank_dropout_scale; float32)."""
from __future__ import annotations

import pytest
import torch

from tests.support.helpers import max_diff

from .pairs import adapter_layer, inputs, pair

METHODS = ["LoHaConfig", "LoKrConfig"]
KINDS = ["linear", "conv2d", "conv1d"]


@pytest.mark.parametrize("config", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_eval_ignores_both_dropouts(config, kind):
    plain, _, _ = pair(kind, config, r=2)
    dropped, theirs, _ = pair(kind, config, r=2, rank_dropout=0.5, module_dropout=0.5)
    x = inputs(kind)
    with torch.no_grad():
        assert torch.equal(dropped(x), plain(x))
        assert torch.equal(dropped(x), theirs(x))


@pytest.mark.parametrize("config", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_module_dropout_one_gives_the_base_output_in_training(config, kind):
    ours, _, base = pair(kind, config, r=2, module_dropout=1.0)
    x = inputs(kind)
    ours.train()
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(ours(x), base(x))
    ours.eval()
    with torch.no_grad():
        assert max_diff(ours(x), base(x)) > 1e-3   # in eval the adapter runs


@pytest.mark.parametrize("config", METHODS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dropouts", [dict(), dict(rank_dropout=0.3), dict(module_dropout=0.5, rank_dropout=0.3)])
def test_training_forward_draws_what_peft_draws(config, kind, dropouts):
    ours, theirs, _ = pair(kind, config, r=2, **dropouts)
    x = inputs(kind)
    for model in (ours, theirs):
        model.train()
    for seed in range(4):
        with torch.no_grad():
            torch.manual_seed(seed)
            got = ours(x)
            after_ours = torch.rand(4)
            torch.manual_seed(seed)
            want = theirs(x)
            after_theirs = torch.rand(4)
        assert max_diff(got, want) <= 1e-5
        assert torch.equal(after_ours, after_theirs)   # the generator is where PEFT leaves it


@pytest.mark.parametrize("config, rescaled", [("LoHaConfig", True), ("LoKrConfig", False), ("LoKrConfig", True)])
def test_rank_mask_shape_values_and_rescaling(config, rescaled):
    extra = {"rank_dropout_scale": True} if config == "LoKrConfig" and rescaled else {}
    ours, _, _ = pair("linear", config, r=2, rank_dropout=0.4, **extra)
    layer = adapter_layer(ours)
    layer.train()
    torch.manual_seed(0)
    mask = layer.rank_mask("default", 48, torch.float32, torch.device("cpu"))
    assert mask.shape == (48,) and mask.dtype == torch.float32
    kept = mask != 0
    assert 10 < int(kept.sum()) < 45                      # about 60% kept
    if rescaled:
        assert torch.allclose(mask[kept], torch.full_like(mask[kept], 48 / int(kept.sum())))
        assert abs(mask.mean().item() - 1) < 1e-6
    else:
        assert torch.equal(mask[kept], torch.ones_like(mask[kept]))
    layer.eval()
    assert layer.rank_mask("default", 48, torch.float32, torch.device("cpu")) is None


@pytest.mark.parametrize("config", METHODS)
def test_rank_dropout_zeroes_whole_output_rows_of_the_delta(config):
    ours, theirs, base = pair("linear", config, r=2, rank_dropout=0.5)
    x = inputs("linear")
    ours.train()
    theirs.train()
    with torch.no_grad():
        torch.manual_seed(7)
        delta = ours(x) - base(x)
        torch.manual_seed(7)
        peft_delta = theirs(x) - base(x)
    dropped = (delta == 0).flatten(0, -2).all(0)          # output features the adapter left alone
    assert 5 < int(dropped.sum()) < 43
    assert torch.equal(dropped, (peft_delta == 0).flatten(0, -2).all(0))
