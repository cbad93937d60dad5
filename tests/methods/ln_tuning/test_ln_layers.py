"""LNTuningLayer against PEFT's, per module type (LayerNorm with bias, Llama's RMSNorm, T5's LayerNorm, a Linear,
a Conv2d, an Embedding, a whole MLP block), on the same copied weights (float32).

Outputs and the copies' gradients within 1e-6 (the same modules run: in practice bit-identical); merge is PEFT's
swap (the tuned copy becomes the base module, bit-identical to PEFT's merged module); unmerge swaps back.
"""
from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
from peft.tuners.ln_tuning.layer import LNTuningLayer as PeftLayer
from torch import nn
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm
from transformers.models.t5.modeling_t5 import T5LayerNorm

import surgery
from surgery.errors import ConfigError, MergeError
from surgery.methods.ln_tuning.layer import LNTuningLayer
from tests.support import tiny_models as tm
from tests.support.helpers import max_diff

pytestmark = pytest.mark.filterwarnings("ignore:Unsupported layer type")   # PEFT's, for every non-Linear
TOL = 1e-6
CONFIG = surgery.LNTuningConfig()


def _modules():
    torch.manual_seed(0)
    return {
        "layernorm": (nn.LayerNorm(8), lambda: torch.randn(3, 5, 8)),
        "llama_rmsnorm": (LlamaRMSNorm(8), lambda: torch.randn(3, 5, 8)),
        "t5_layernorm": (T5LayerNorm(8), lambda: torch.randn(3, 5, 8)),
        "linear": (nn.Linear(8, 4), lambda: torch.randn(3, 8)),
        "conv2d": (nn.Conv2d(3, 4, 3), lambda: torch.randn(2, 3, 6, 6)),
        "embedding": (nn.Embedding(10, 4), lambda: torch.randint(0, 10, (2, 5))),
        "mlp_block": (LlamaMLP(tm.llama_config(hidden_size=8, intermediate_size=16)), lambda: torch.randn(2, 3, 8)),
    }


def _pair(base: nn.Module, names=("default",)):
    """(surgery layer, peft layer) wrapping copies of `base`, each adapter's copy perturbed the same way."""
    ours = LNTuningLayer(copy.deepcopy(base))
    theirs = None
    for i, name in enumerate(names):
        ours.update_layer(name, CONFIG)
        if theirs is None:
            theirs = PeftLayer(copy.deepcopy(base), name, peft.LNTuningConfig())
        else:
            theirs.update_layer(theirs.base_layer, name, peft.LNTuningConfig())
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p, q in zip(ours.ln_tuning_layers[name].parameters(), theirs.ln_tuning_layers[name].parameters()):
                p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g)).add_(0.1)
                q.copy_(p)
    theirs.set_adapter(names[0])
    return ours, theirs


@pytest.mark.parametrize("kind", list(_modules()))
def test_forward_and_gradients_equal_peft(kind):
    base, inputs = _modules()[kind]
    ours, theirs = _pair(base)
    x = inputs()
    got, want = ours(x), theirs(x)
    assert max_diff(got, want) <= TOL and max_diff(got, base(x)) > 1e-3
    weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(5))
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    mine = dict(ours.ln_tuning_layers.named_parameters())
    their_params = dict(theirs.ln_tuning_layers.named_parameters())
    assert set(mine) == set(their_params) and mine
    for name, p in mine.items():
        assert p.requires_grad and max_diff(p.grad, their_params[name].grad) <= TOL, name
    assert all(p.grad is None for p in ours.base_layer.parameters())


@pytest.mark.parametrize("kind", list(_modules()))
def test_merge_is_peft_s_swap_and_unmerge_swaps_back(kind):
    base, inputs = _modules()[kind]
    ours, theirs = _pair(base)
    original = ours.base_layer
    x = inputs()
    adapted = ours(x)
    for safe in (False, True):
        ours.merge(safe_merge=safe)
        theirs.merge(safe_merge=safe)
        mine, their_state = ours.base_layer.state_dict(), theirs.base_layer.state_dict()
        assert all(torch.equal(mine[k], their_state[k]) for k in their_state)
        assert ours.ln_tuning_layers["default"] is original and ours.merged_adapters == ["default"]
        assert torch.equal(ours(x), adapted)
        ours.unmerge()
        theirs.unmerge()
        assert ours.base_layer is original and not ours.merged


def test_merge_and_unload_leaves_the_tuned_copies_as_peft():
    ours = surgery.get_peft_model(tm.tiny_gpt2(), surgery.LNTuningConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(tm.tiny_gpt2(), peft.LNTuningConfig())
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "ln_tuning_layers" in n:
                p.add_(0.1 * torch.randn_like(p))
    peft.set_peft_model_state_dict(theirs, surgery.get_peft_model_state_dict(ours))
    ids = tm.token_batch()
    adapted = ours(input_ids=ids).logits
    merged_ours, merged_theirs = ours.merge_and_unload(), theirs.merge_and_unload()
    mine, their_state = merged_ours.state_dict(), merged_theirs.state_dict()
    assert set(mine) == set(their_state) and all(torch.equal(mine[k], their_state[k]) for k in mine)
    assert type(merged_ours.transformer.ln_f) is nn.LayerNorm
    assert torch.equal(merged_ours(input_ids=ids).logits, adapted)


def test_merge_and_unload_of_a_block_keeps_the_tuned_block():
    """PEFT's merge_and_unload fails on a copied block (it reassigns `.weight`); surgery leaves the tuned copy."""
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LNTuningConfig(target_modules=["mlp"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "ln_tuning_layers" in n:
                p.mul_(1.1)
    ids = tm.token_batch()
    adapted = model(input_ids=ids).logits
    merged = model.merge_and_unload()
    assert type(merged.model.layers[0].mlp) is LlamaMLP
    assert torch.equal(merged(input_ids=ids).logits, adapted)


def test_a_copied_block_trains_every_nested_parameter_as_in_peft():
    ours = surgery.get_peft_model(tm.tiny_llama(), surgery.LNTuningConfig(target_modules=["mlp"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(tm.tiny_llama(), peft.LNTuningConfig(target_modules=["mlp"]))
    trainable = [n for n, p in ours.named_parameters() if p.requires_grad]
    assert trainable == [n for n, p in theirs.named_parameters() if p.requires_grad] and len(trainable) == 6
    ours.add_adapter("other", surgery.LNTuningConfig(target_modules=["mlp"]))
    ours.set_adapter("other")
    assert all(".other." in n for n, p in ours.named_parameters() if p.requires_grad)


def test_safe_merge_refuses_nan_and_leaves_the_layer_untouched():
    ours, _ = _pair(nn.LayerNorm(8))
    original = ours.base_layer
    with torch.no_grad():
        ours.ln_tuning_layers["default"].weight[0] = float("inf")
    with pytest.raises(MergeError, match="NaN/inf"):
        ours.merge(safe_merge=True)
    assert ours.base_layer is original and not ours.merged


def test_one_adapter_merges_at_a_time():
    ours, theirs = _pair(nn.LayerNorm(8), names=("default", "other"))
    with pytest.raises(MergeError, match="merges one adapter at a time"):
        ours.merge(adapter_names=["default", "other"])
    with pytest.raises(ValueError):
        theirs.merge(adapter_names=["default", "other"])
    ours.merge(adapter_names=["default"])
    other = ours.ln_tuning_layers["other"]
    ours.merge(adapter_names=["other"])   # PEFT: unmerges "default" first
    assert ours.merged_adapters == ["other"] and ours.base_layer is other


def test_an_adapter_added_while_merged_copies_the_original():
    base = nn.LayerNorm(8)
    ours, _ = _pair(base)
    ours.merge()
    ours.update_layer("other", CONFIG)
    assert torch.equal(ours.ln_tuning_layers["other"].weight, base.weight)


def test_two_active_adapters_are_refused_and_a_missing_one_runs_the_base():
    ours, _ = _pair(nn.LayerNorm(8), names=("default", "other"))
    ours.set_adapter(["default", "other"])
    with pytest.raises(ConfigError, match="one adapter at a time"):
        ours(torch.randn(2, 8))
    ours.set_adapter("absent")   # PEFT raises KeyError here; surgery runs the base module, as LoRA layers do
    x = torch.randn(2, 8)
    assert torch.equal(ours(x), ours.base_layer(x))


def test_disabled_is_bit_identical_to_the_base_and_unmerges():
    base = nn.LayerNorm(8)
    ours, _ = _pair(base)
    x = torch.randn(4, 8)
    ours.merge()
    ours.enable_adapters(False)
    assert torch.equal(ours(x), base(x)) and not ours.merged


def test_delete_adapter_unmerges_and_removes_the_copy():
    ours, _ = _pair(nn.LayerNorm(8), names=("default", "other"))
    original = ours.base_layer
    ours.merge(adapter_names=["other"])
    ours.delete_adapter("other")
    assert ours.base_layer is original and list(ours.ln_tuning_layers) == ["default"]


def test_a_bf16_model_keeps_its_norm_copies_in_bf16():
    model = surgery.get_peft_model(tm.tiny_llama().to(torch.bfloat16), surgery.LNTuningConfig())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model(input_ids=tm.token_batch())
