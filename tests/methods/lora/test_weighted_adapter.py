"""LoraModel.add_weighted_adapter against real PEFT: the same new adapter (state dict, forward, r / lora_alpha /
target_modules) for every combination type on Linear, transformers' Conv1D, Embedding, Conv2d (3x3 and 1x1) and a
tiny Llama, the same errors, and a new adapter that behaves as any other (save / load, merge, delete).

Both sides start from the same adapter weights (PEFT's state dict loaded into surgery). dare_* draw random masks
with torch.bernoulli: surgery draws them over the same tensors in the same order as PEFT, so with the same
torch.manual_seed before the call the results are PEFT's exactly; the tests check that too.

Tolerances (float32): factors and outputs 1e-5 (svd factors: 1e-4, LAPACK on the same input is deterministic but
the combined delta may be formed in another order). Where PEFT leaves an unusable adapter (svd types on Conv1d /
Conv3d, whose delta is not flattened; svd_rank above min(out, in)), surgery is checked against the exact
combination sum_i w_i * delta_i instead.
"""
from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
from torch import nn

import surgery
from tests.support.tiny_models import tiny_llama

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D

ALL_TYPES = ["svd", "linear", "cat", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
             "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"]
TOL = 1e-5
SVD_TOL = 1e-4


class Net(nn.Module):
    """Embedding, Linear and transformers' Conv1D (fan_in_fan_out)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 12)
        self.lin0 = nn.Linear(12, 16)
        self.c1 = Conv1D(16, 16)
        self.lin1 = nn.Linear(16, 4)

    def forward(self, x):
        return self.lin1(torch.relu(self.c1(torch.relu(self.lin0(self.emb(x)))))).mean(1)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 6, 3, padding=1)
        self.c1 = nn.Conv2d(6, 5, 1)
        self.c2 = nn.Conv1d(5, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.c1(torch.relu(self.c0(x))))
        return self.head(self.c2(h.flatten(2)).mean(-1))


def _seeded(cls, seed=0):
    torch.manual_seed(seed)
    return cls()


def _pair(base, kwargs_a, kwargs_b, extra=()):
    """(peft model, surgery model) with adapters "a" and "b" (and `extra` (name, kwargs)), equal weights."""
    adapters = [("b", kwargs_b), *extra]

    def build(lib):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = lib.get_peft_model(copy.deepcopy(base), lib.LoraConfig(**kwargs_a), adapter_name="a")
            for name, kwargs in adapters:
                model.add_adapter(name, lib.LoraConfig(**kwargs))
        return model

    pm, sm = build(peft), build(surgery)
    for name in ["a"] + [n for n, _ in adapters]:
        state = peft.get_peft_model_state_dict(pm, adapter_name=name)
        surgery.set_peft_model_state_dict(sm, state, adapter_name=name)
    return pm, sm


def _both(pm, sm, *args, seed=1, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        pm.add_weighted_adapter(*args, **kwargs)
        torch.manual_seed(seed)
        sm.add_weighted_adapter(*args, **kwargs)


def _max_diff(a, b) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def _compare(pm, sm, name, x, tol=TOL, padded=False):
    ps = peft.get_peft_model_state_dict(pm, adapter_name=name)
    ss = surgery.get_peft_model_state_dict(sm, adapter_name=name)
    assert ps.keys() == ss.keys()
    for key in ps:
        p, t = ps[key], ss[key]
        if p.shape != t.shape:
            # svd_full_matrices=False with a rank above min(out, in): PEFT's factors shrink to that size (against
            # its config's r); surgery keeps r and fills the extra rank with zeros: the same delta
            assert padded, key
            dim = 0 if "lora_A" in key or "lora_embedding_A" in key else 1
            extra = t.narrow(dim, p.shape[dim], t.shape[dim] - p.shape[dim])
            assert not extra.any(), key
            t = t.narrow(dim, 0, p.shape[dim])
        assert _max_diff(p, t) <= tol * max(1.0, p.abs().max().item()), key
    pc, sc = pm.peft_config[name], sm.peft_config[name]
    assert (sc.r, sc.lora_alpha) == (pc.r, pc.lora_alpha)
    assert set(sc.target_modules) == set(pc.target_modules)
    assert sc.rank_pattern == pc.rank_pattern == {} and sc.alpha_pattern == pc.alpha_pattern == {}
    pm.set_adapter(name)
    sm.set_adapter(name)
    with torch.no_grad():
        po, so = pm(x), sm(x)
    po = po.logits if hasattr(po, "logits") else po
    so = so.logits if hasattr(so, "logits") else so
    assert _max_diff(po, so) <= tol * max(1.0, po.abs().max().item())


def _deltas(model, name):
    from surgery.methods.lora.layer import LoraLayer

    return {fqn: m.delta_weight(name) for fqn, m in model.named_modules()
            if isinstance(m, LoraLayer) and name in m.r}


KW_A = dict(target_modules=["emb", "lin0", "c1"], r=4, lora_alpha=8, init_lora_weights=False)
KW_B = dict(target_modules=["lin0", "lin1", "c1"], r=4, lora_alpha=16, init_lora_weights=False)
TOKENS = torch.randint(0, 30, (2, 5), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("combination_type", ALL_TYPES)
@pytest.mark.parametrize("weights", [[0.7, -1.3], [1.0, 1.0], [-0.5, 0.0]])
def test_matches_peft_linear_conv1d_embedding(combination_type, weights):
    pm, sm = _pair(_seeded(Net), KW_A, KW_B)
    _both(pm, sm, ["a", "b"], weights, "m", combination_type=combination_type, density=0.5)
    tol = SVD_TOL if combination_type.endswith("svd") else TOL
    _compare(pm, sm, "m", TOKENS, tol)


@pytest.mark.parametrize("combination_type", ["ties", "ties_svd", "dare_ties", "dare_ties_svd"])
def test_majority_sign_frequency_and_density(combination_type):
    pm, sm = _pair(_seeded(Net), KW_A, KW_B)
    _both(pm, sm, ["a", "b"], [0.9, -0.4], "m", combination_type=combination_type, density=0.3,
          majority_sign_method="frequency")
    _compare(pm, sm, "m", TOKENS, SVD_TOL)


@pytest.mark.parametrize("combination_type", ALL_TYPES)
def test_matches_peft_conv2d(combination_type):
    kw = dict(target_modules=["c0", "c1"], r=4, init_lora_weights=False)
    pm, sm = _pair(_seeded(ConvNet), {**kw, "lora_alpha": 8}, {**kw, "lora_alpha": 16})
    _both(pm, sm, ["a", "b"], [0.7, -1.3], "m", combination_type=combination_type, density=0.5)
    _compare(pm, sm, "m", torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)), SVD_TOL)


@pytest.mark.parametrize("combination_type", ["linear", "cat", "ties", "magnitude_prune", "dare_linear"])
def test_matches_peft_conv1d_factor_types(combination_type):
    kw = dict(target_modules=["c2"], r=4, init_lora_weights=False)
    pm, sm = _pair(_seeded(ConvNet), {**kw, "lora_alpha": 8}, {**kw, "lora_alpha": 16})
    _both(pm, sm, ["a", "b"], [0.7, -1.3], "m", combination_type=combination_type, density=0.5)
    _compare(pm, sm, "m", torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)))


def test_svd_on_conv1d_is_the_exact_combination():
    """PEFT's svd leaves Conv1d unusable (its 3-D delta is not flattened); surgery factorises the flattened delta."""
    kw = dict(target_modules=["c2"], r=4, init_lora_weights=False)
    _, sm = _pair(_seeded(ConvNet), {**kw, "lora_alpha": 8}, {**kw, "lora_alpha": 16})
    sm.add_weighted_adapter(["a", "b"], [0.7, -1.3], "m", combination_type="svd", svd_rank=8)
    da, db, dm = _deltas(sm, "a"), _deltas(sm, "b"), _deltas(sm, "m")
    for key in dm:
        assert torch.allclose(dm[key], 0.7 * da[key] - 1.3 * db[key], atol=1e-5)
    sm.set_adapter("m")
    sm(torch.randn(1, 3, 4, 4))


@pytest.mark.parametrize("combination_type", ["svd", "cat", "linear", "ties", "dare_ties", "magnitude_prune_svd"])
def test_matches_peft_tiny_llama(combination_type):
    kw = dict(target_modules=["q_proj", "v_proj"], r=4, init_lora_weights=False)
    pm, sm = _pair(tiny_llama(), {**kw, "lora_alpha": 8}, {**kw, "lora_alpha": 4})
    _both(pm, sm, ["a", "b"], [1.5, 0.5], "m", combination_type=combination_type, density=0.5)
    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    _compare(pm, sm, "m", ids, SVD_TOL)


def test_different_ranks_cat_and_svd_rank_pattern():
    kw_a = dict(KW_A, r=4, rank_pattern={"lin0": 2}, alpha_pattern={"c1": 3})
    kw_b = dict(KW_B, r=6, rank_pattern={"lin1": 3})
    pm, sm = _pair(_seeded(Net), kw_a, kw_b)
    _both(pm, sm, ["a", "b"], [1.0, 0.5], "cat", combination_type="cat")
    _compare(pm, sm, "cat", TOKENS)
    assert sm.peft_config["cat"].r == 10
    _both(pm, sm, ["a", "b"], [1.0, 0.5], "svd", combination_type="svd", svd_rank=3, svd_clamp=0.9)
    _compare(pm, sm, "svd", TOKENS, SVD_TOL)
    _both(pm, sm, ["a", "b"], [1.0, 0.5], "svd_reduced", svd_full_matrices=False)
    _compare(pm, sm, "svd_reduced", TOKENS, SVD_TOL, padded=True)
    assert sm.peft_config["svd_reduced"].r == 6


def test_cat_is_exact_and_matches_both_adapters_active():
    _, sm = _pair(_seeded(Net), KW_A, KW_B)
    sm.base_model.set_adapter(["a", "b"])
    with torch.no_grad():
        both = sm(TOKENS)
    sm.add_weighted_adapter(["a", "b"], [1.0, 1.0], "m", combination_type="cat")
    sm.set_adapter("m")
    with torch.no_grad():
        assert torch.allclose(sm(TOKENS), both, atol=1e-5)


def test_single_adapter_is_reweighted_linearly():
    pm, sm = _pair(_seeded(Net), KW_A, KW_B)
    _both(pm, sm, ["a"], [-0.5], "neg")   # svd asked: one adapter is always combined linearly
    _compare(pm, sm, "neg", TOKENS)
    da, dn = _deltas(sm, "a"), _deltas(sm, "neg")
    for key in da:
        assert torch.allclose(dn[key], -0.5 * da[key], atol=1e-6)


def test_svd_rank_above_layer_size_fills_zeros():
    """lin1 has 4 outputs: PEFT would give it mismatched factors; surgery pads the rank with zeros."""
    _, sm = _pair(_seeded(Net), KW_A, KW_B)
    sm.add_weighted_adapter(["a", "b"], [1.0, 2.0], "m", combination_type="svd", svd_rank=16)
    da, db, dm = _deltas(sm, "a"), _deltas(sm, "b"), _deltas(sm, "m")
    for key in dm:
        expected = da.get(key, 0) * 1.0 + db.get(key, 0) * 2.0
        assert torch.allclose(dm[key], expected, atol=1e-5), key
    sm.set_adapter("m")
    sm(TOKENS)


def test_new_adapter_is_a_normal_adapter(tmp_path):
    _, sm = _pair(_seeded(Net), KW_A, KW_B)
    sm.add_weighted_adapter(["a", "b"], [0.7, 0.3], "m", combination_type="cat")
    assert sm.active_adapters == ["a"]
    assert not any(p.requires_grad for n, p in sm.named_parameters() if ".m." in n or n.endswith(".m"))
    sm.add_weighted_adapter(["a"], [5.0], "m")   # an existing name: left as it is (PEFT)
    assert sm.peft_config["m"].r == 8
    sm.set_adapter("m")
    with torch.no_grad():
        out = sm(TOKENS)
    sm.save_pretrained(str(tmp_path), selected_adapters=["m"])
    loaded = surgery.PeftModel.from_pretrained(_seeded(Net), str(tmp_path / "m") if (tmp_path / "m").exists()
                                               else str(tmp_path), adapter_name="m")
    with torch.no_grad():
        assert torch.allclose(loaded(TOKENS), out, atol=1e-6)
    sm.merge_adapter(["m"])
    with torch.no_grad():
        assert torch.allclose(sm(TOKENS), out, atol=1e-5)
    sm.unmerge_adapter()
    sm.set_adapter("a")
    sm.delete_adapter("m")
    assert "m" not in sm.peft_config
    assert not any(".m." in k for k in sm.state_dict())


# -- errors: PEFT's types and words -------------------------------------------------------------------------
_FRESH = iter(range(10**6))


def _both_raise(pm, sm, exc, match, adapters, weights, **kwargs):
    """Both refuse; a fresh name each time (PEFT keeps the config of a refused adapter, so a later call with that
    name would return at once). surgery keeps nothing of it."""
    name = f"m{next(_FRESH)}"
    with pytest.raises(exc, match=match):
        pm.add_weighted_adapter(adapters, weights, name, **kwargs)
    with pytest.raises(exc, match=match):
        sm.add_weighted_adapter(adapters, weights, name, **kwargs)
    assert name not in sm.peft_config and name not in sm.plans
    assert not any(f".{name}." in key for key in sm.state_dict())


def test_errors_match_peft():
    pm, sm = _pair(_seeded(Net), KW_A, KW_B, extra=[("c", dict(KW_B, r=6)), ("s", dict(KW_B, target_modules="lin.*"))])
    _both_raise(pm, sm, ValueError, "Adapter nope does not exist", ["a", "nope"], [1.0, 1.0])
    for ct in ["linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"]:
        _both_raise(pm, sm, ValueError, "All adapters must have the same r value", ["a", "c"], [1.0, 1.0],
                    combination_type=ct, density=0.5)
    _both_raise(pm, sm, ValueError, "Invalid combination_type: nope", ["a", "b"], [1.0, 1.0],
                combination_type="nope")
    _both_raise(pm, sm, ValueError, "all adapter configs should follow the same target modules type",
                ["a", "s"], [1.0, 1.0], combination_type="cat")
    _both_raise(pm, sm, ValueError, "Density should be >= 0", ["a", "b"], [1.0, 1.0],
                combination_type="ties", density=-0.1)
    _both_raise(pm, sm, RuntimeError, "Unimplemented mask method", ["a", "b"], [1.0, 1.0],
                combination_type="ties", density=0.5, majority_sign_method="nope")
    _both_raise(pm, sm, TypeError, "", ["a", "b"], [1.0, 1.0], combination_type="ties")   # density missing
    with pytest.warns(UserWarning, match="The density 1.0 is greater than or equal to 1"):
        sm.add_weighted_adapter(["a", "b"], [1.0, 1.0], "full", combination_type="ties", density=1.0)
    with pytest.raises(ValueError, match="one weight per adapter"):   # PEFT silently drops the unweighted ones
        sm.add_weighted_adapter(["a", "b"], [1.0], "m")


def test_regex_target_modules_are_joined():
    kw = dict(r=4, init_lora_weights=False)
    pm, sm = _pair(_seeded(Net), dict(kw, target_modules="lin0"), dict(kw, target_modules=".*lin1"))
    _both(pm, sm, ["a", "b"], [1.0, 1.0], "m", combination_type="cat")
    assert sm.peft_config["m"].target_modules == pm.peft_config["m"].target_modules == "(lin0)|(.*lin1)"
    _compare(pm, sm, "m", TOKENS)


def test_modules_to_save_same_module_refused_mixed_allowed():
    kw = dict(target_modules=["lin0"], init_lora_weights=False)
    pm, sm = _pair(_seeded(Net), dict(kw, modules_to_save=["lin1"]), kw,
                   extra=[("c", dict(kw, modules_to_save=["lin1"]))])
    msg = re.escape("Cannot add weighted adapters if they target the same module with modules_to_save, but found 1 "
                    "such instance(s).")
    _both_raise(pm, sm, ValueError, msg, ["a", "c"], [1.0, 1.0])
    _both(pm, sm, ["a", "b"], [1.0, 1.0], "m")
    for model in (pm, sm):
        holder = model.base_model.model.lin1.modules_to_save
        assert "m" in holder and "a" in holder and "b" not in holder
    _compare(pm, sm, "m", TOKENS, SVD_TOL)


def test_bias_adapter_refused_like_peft():
    kw = dict(target_modules=["lin0"], init_lora_weights=False)
    pm, sm = _pair(_seeded(Net), dict(kw, bias="lora_only"), kw)
    _both_raise(pm, sm, ValueError, "LoraModel supports only 1 adapter with bias", ["a", "b"], [1.0, 1.0])


@pytest.mark.parametrize("combination_type", ["cat", "svd", "linear"])
def test_dora_adapters_as_peft(combination_type):
    """PEFT does not refuse DoRA: the new adapter is a DoRA one (the first adapter's config), its magnitude set
    when it is injected, before its factors are filled; surgery gives the same adapter."""
    kw = dict(target_modules=["lin0", "c1"], r=4, use_dora=True, init_lora_weights=False)
    pm, sm = _pair(_seeded(Net), kw, dict(kw, lora_alpha=16))
    _both(pm, sm, ["a", "b"], [1.0, 0.5], "m", combination_type=combination_type)
    _compare(pm, sm, "m", TOKENS, SVD_TOL)
