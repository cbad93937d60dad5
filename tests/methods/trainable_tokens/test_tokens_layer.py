"""TrainableTokensLayer against PEFT's, per base layer type, on the same weights (float32).

Forward outputs and delta gradients within 1e-6 (the shortcut sums the same terms in another order); the
embedding options that take PEFT's replaced-weight path (a trainable padding row, max_norm,
scale_grad_by_freq) and Gemma-style embed_scale included. Merged weights are PEFT's bit for bit (rows are
copied, no arithmetic); unmerge restores the base exactly.
"""
from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
from peft.tuners.trainable_tokens.layer import TrainableTokensLayer as PeftLayer
from torch import nn

import surgery
from surgery.errors import MergeError
from surgery.methods.trainable_tokens.layer import TrainableTokensLayer
from tests.support.helpers import max_diff

TOL = 1e-6


def _pair(base: nn.Module, indices, names=("default",)):
    """(surgery layer, peft layer) on copies of `base`, each adapter's rows set to the same random values."""
    ours, theirs = TrainableTokensLayer(copy.deepcopy(base)), None
    g = torch.Generator().manual_seed(7)
    for i, name in enumerate(names):
        rows = indices if i == 0 else [r + 1 for r in indices]
        ours.update_layer(name, surgery.TrainableTokensConfig(token_indices=rows), token_indices=rows)
        config = peft.TrainableTokensConfig(token_indices=rows)
        if theirs is None:
            theirs = PeftLayer(copy.deepcopy(base), name, config=config)
        theirs.update_layer(name, config=config)
        values = torch.randn(ours.trainable_tokens_delta[name].shape, generator=g)
        with torch.no_grad():
            ours.trainable_tokens_delta[name].copy_(values)
            theirs.trainable_tokens_delta[name].copy_(values)
    return ours, theirs


def _ids(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 9), generator=torch.Generator().manual_seed(seed))


def _check_forward_backward(ours, theirs, x, names=("default",)):
    got, want = ours(x), theirs(x)
    assert max_diff(got, want) <= TOL
    weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(3))
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    for name in names:
        g_ours = ours.trainable_tokens_delta[name].grad
        g_theirs = theirs.trainable_tokens_delta[name].grad
        assert g_theirs.abs().max() > 0
        assert max_diff(g_ours, g_theirs) <= TOL, name
    return got


EMBEDDINGS = {
    "plain": dict(),
    "padding_row_trained": dict(padding_idx=3),   # token 3 is trainable: its row gets no gradient, as in PEFT
    "padding_row_untouched": dict(padding_idx=0),
    "max_norm": dict(max_norm=1.0),
    "scale_grad_by_freq": dict(scale_grad_by_freq=True),
}


@pytest.mark.parametrize("kind", EMBEDDINGS)
def test_embedding_forward_and_gradients_equal_peft(kind):
    torch.manual_seed(0)
    base = nn.Embedding(20, 6, **EMBEDDINGS[kind])
    ours, theirs = _pair(base, [3, 5, 11])
    ids = _ids(20)
    ids[0, :3] = torch.tensor([3, 5, 11])
    out = _check_forward_backward(ours, theirs, ids)
    if kind != "max_norm":   # (max_norm renormalises the looked-up row)
        assert max_diff(out[0, 1], ours.trainable_tokens_delta["default"][1]) <= TOL   # row 5 is delta's row 1
    if kind == "padding_row_trained":
        assert torch.equal(ours.trainable_tokens_delta["default"].grad[0], torch.zeros(6))


def test_the_shortcut_never_builds_the_replaced_weight(monkeypatch):
    """A plain embedding takes the lookup shortcut: index_copy (PEFT's vocabulary-sized W') is never called."""
    calls = []
    original = torch.Tensor.index_copy
    monkeypatch.setattr(torch.Tensor, "index_copy", lambda *a, **k: calls.append(1) or original(*a, **k))
    ours, _ = _pair(nn.Embedding(20, 6), [3, 5])
    ours(_ids(20))
    assert calls == []


def test_linear_rows_are_output_units_as_in_peft():
    torch.manual_seed(0)
    base = nn.Linear(6, 20, bias=False)   # an lm_head: its rows are tokens
    ours, theirs = _pair(base, [0, 4, 19])
    _check_forward_backward(ours, theirs, torch.randn(2, 5, 6))


def test_a_linear_keeps_its_bias_where_peft_drops_it():
    """PEFT's forward calls F.linear(x, W') without the bias; surgery keeps it, so an untrained adapter is a
    no-op: y = x W'^T + b (checked by formula, and against PEFT's output plus the bias)."""
    torch.manual_seed(0)
    base = nn.Linear(6, 20)
    ours, theirs = _pair(base, [2, 7])
    x = torch.randn(4, 6)
    replaced = base.weight.detach().clone()
    replaced[[2, 7]] = ours.trainable_tokens_delta["default"].detach()
    assert max_diff(ours(x), x @ replaced.T + base.bias) <= TOL
    assert max_diff(ours(x), theirs(x) + base.bias) <= TOL
    untrained = TrainableTokensLayer(copy.deepcopy(base))
    untrained.update_layer("default", surgery.TrainableTokensConfig(token_indices=[2, 7]), token_indices=[2, 7])
    assert max_diff(untrained(x), base(x)) <= TOL


def test_embed_scale_is_applied_as_peft_does():
    base = nn.Embedding(20, 6)
    base.embed_scale = torch.tensor(2.5)   # Gemma3TextScaledWordEmbedding scales in its own forward
    ours, theirs = _pair(base, [1, 2])
    _check_forward_backward(ours, theirs, _ids(20))


def test_two_active_adapters_with_disjoint_rows_equal_peft():
    ours, theirs = _pair(nn.Embedding(20, 6), [3, 8], names=("default", "other"))
    for layer in (ours, theirs):
        layer.set_adapter(["default", "other"])
    _check_forward_backward(ours, theirs, _ids(20), names=("default", "other"))


def test_overlapping_active_adapters_are_refused():
    ours, _ = _pair(nn.Embedding(20, 6), [3, 8], names=("default", "other"))
    ours.update_layer("third", surgery.TrainableTokensConfig(token_indices=[8]), token_indices=[8])
    ours.set_adapter(["default", "third"])
    with pytest.raises(MergeError, match="both train token 8"):
        ours(_ids(20))


def test_init_weights_false_gives_random_rows():
    base = nn.Embedding(20, 6)
    layer = TrainableTokensLayer(base)
    layer.update_layer("default", surgery.TrainableTokensConfig(token_indices=[1, 2]), token_indices=[1, 2],
                       init_weights=False)
    assert not torch.allclose(layer.trainable_tokens_delta["default"], base.weight[[1, 2]])
    assert torch.equal(layer.trainable_tokens_original["default"], base.weight[[1, 2]])


# -- merge -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base", [nn.Embedding(20, 6), nn.Linear(6, 20, bias=False)], ids=["embedding", "linear"])
def test_merge_safe_merge_and_unmerge_equal_peft(base):
    ours, theirs = _pair(base, [1, 9, 17])
    before = base.weight.detach().clone()
    x = _ids(20) if isinstance(base, nn.Embedding) else torch.randn(3, 6)
    adapted = ours(x)
    for safe in (False, True):
        ours.merge(safe_merge=safe)
        theirs.merge(safe_merge=safe)
        assert torch.equal(ours.get_base_layer().weight, theirs.get_base_layer().weight)
        assert max_diff(ours(x), adapted) <= TOL
        ours.unmerge()
        theirs.unmerge()
        assert torch.equal(ours.get_base_layer().weight, before)


def test_safe_merge_refuses_nan_and_leaves_the_weight_untouched():
    ours, _ = _pair(nn.Embedding(20, 6), [1, 9])
    before = ours.get_base_layer().weight.detach().clone()
    with torch.no_grad():
        ours.trainable_tokens_delta["default"][0, 0] = float("nan")
    with pytest.raises(MergeError, match="NaN/inf"):
        ours.check_merge()
    with pytest.raises(MergeError, match="NaN/inf"):
        ours.merge(safe_merge=True)
    assert torch.equal(ours.get_base_layer().weight, before) and not ours.merged


def test_merging_overlapping_adapters_is_refused():
    ours, _ = _pair(nn.Embedding(20, 6), [3, 8], names=("default", "other"))
    ours.update_layer("third", surgery.TrainableTokensConfig(token_indices=[3]), token_indices=[3])
    ours.merge(adapter_names=["default"])
    with pytest.raises(MergeError, match="both train token 3"):
        ours.merge(adapter_names=["third"])


def test_disabled_is_bit_identical_to_the_base_and_unmerges():
    base = nn.Embedding(20, 6)
    ours, _ = _pair(base, [1, 2])
    ids = _ids(20)
    expected = base(ids)
    ours.merge()
    ours.enable_adapters(False)
    assert torch.equal(ours(ids), expected) and not ours.merged


def test_delete_adapter_removes_its_rows_and_buffers():
    ours, _ = _pair(nn.Embedding(20, 6), [3, 8], names=("default", "other"))
    ours.delete_adapter("other")
    assert ours.adapter_names() == ["default"]
    assert "other" not in ours.token_indices and list(ours.trainable_tokens_delta) == ["default"]
    assert [n for n, _ in ours.named_buffers()] == ["trainable_tokens_original.default"]


def test_a_whole_model_trains_the_rows_only():
    model = surgery.get_peft_model(_tiny_llama(), surgery.TrainableTokensConfig(token_indices=[7, 20]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["base_model.model.model.embed_tokens.trainable_tokens_delta.default"]


def _tiny_llama():
    from tests.support import tiny_models as tm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tm.tiny_llama()
