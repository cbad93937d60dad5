"""surgery.functional as peft.functional: the same calls on an injected plain model give the same states."""
import peft
import peft.functional as peft_functional
import pytest
import torch
from peft.utils.constants import bloom_model_postprocess_past_key_value as peft_bloom

import surgery
import surgery.functional as functional
from surgery.errors import AdapterNameError
from tests.support import tiny_models
from tests.support.helpers import perturb_adapters

CONFIG = dict(r=4, target_modules=["q_proj", "v_proj"])


def _injected(lib, fn, names=("a", "b"), **overrides):
    model = tiny_models.tiny_llama()
    for name in names:
        fn.inject_adapter_in_model(lib.LoraConfig(**{**CONFIG, **overrides}), model, adapter_name=name)
    return model


def _grads(model) -> dict:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def _pair(**overrides):
    ours, theirs = _injected(surgery, functional, **overrides), _injected(peft, peft_functional, **overrides)
    perturb_adapters(ours, seed=4)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def test_functional_namespace_is_peft_s():
    assert sorted(functional.__all__) == sorted(peft_functional.__all__)
    for name in functional.__all__:
        assert getattr(surgery, name) is getattr(functional, name)


@pytest.mark.parametrize("inference_mode", [False, True])
def test_set_adapter_activates_and_freezes_as_peft(inference_mode):
    ours, theirs = _pair()
    functional.set_adapter(ours, "b", inference_mode=inference_mode)
    peft_functional.set_adapter(theirs, "b", inference_mode=inference_mode)
    assert _grads(ours) == _grads(theirs)
    ids = tiny_models.token_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-6, rtol=0)
    functional.set_adapter(ours, ["a", "b"])
    peft_functional.set_adapter(theirs, ["a", "b"])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-6, rtol=0)
    with pytest.raises(AdapterNameError, match=r"set_adapter: adapter\(s\) \['c'\] are on no layer.*\['a', 'b'\]"):
        functional.set_adapter(ours, ["a", "c"])


def test_modules_to_save_copies_follow_the_active_adapter():
    """Only the active adapter's copy trains (PEFT leaves an earlier adapter's copy requiring grad after
    switching: it freezes only the copies active at that moment), and two copies cannot both be active."""
    ours = _injected(surgery, functional, modules_to_save=["lm_head"])
    theirs = _injected(peft, peft_functional, modules_to_save=["lm_head"])
    functional.set_adapter(ours, "b")
    peft_functional.set_adapter(theirs, "b")
    ours_grads, theirs_grads = _grads(ours), _grads(theirs)
    assert ours_grads["lm_head.modules_to_save.b.weight"] and not ours_grads["lm_head.modules_to_save.a.weight"]
    assert theirs_grads.pop("lm_head.modules_to_save.a.weight")   # the PEFT difference above
    assert {k: v for k, v in ours_grads.items() if k != "lm_head.modules_to_save.a.weight"} == theirs_grads
    with pytest.raises(AdapterNameError, match="Only one adapter can be set at a time for ModulesToSaveWrapper"):
        functional.set_adapter(ours, ["a", "b"])
    with pytest.raises(ValueError, match="Only one adapter can be set at a time"):
        peft_functional.set_adapter(theirs, ["a", "b"])


def test_set_adapter_on_a_merged_layer_unmerges_with_peft_s_warning():
    ours, _ = _pair()
    layer = ours.model.layers[0].self_attn.q_proj
    layer.merge(adapter_names=["a"])
    with pytest.warns(UserWarning, match="Adapter cannot be set when the model is merged. Unmerging the model first."):
        functional.set_adapter(ours, "b")
    assert not layer.merged


def test_delete_adapter_returns_the_active_ones_and_leaves_nothing_behind():
    ours, theirs = _pair()
    functional.set_adapter(ours, ["a", "b"])
    peft_functional.set_adapter(theirs, ["a", "b"])
    assert functional.delete_adapter(ours, "a", prefix="lora_") == peft_functional.delete_adapter(theirs, "a", "lora_")
    assert not [k for k in ours.state_dict() if ".a." in k or k.endswith(".a")]
    leftover = {k for k in theirs.state_dict() if ".a." in k or k.endswith(".a")}
    assert not {k for k, _ in ours.named_buffers() if ".a." in k}
    ids = tiny_models.token_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-6, rtol=0)
    assert leftover == set()   # PEFT leaves none for LoRA either; the check above is ours for every layer type
    with pytest.raises(AdapterNameError, match="delete_adapter"):
        functional.delete_adapter(ours, "a", prefix="lora_")


def test_set_requires_grad_and_cast_adapter_dtype_as_peft():
    ours, theirs = _pair()
    functional.set_requires_grad(ours, ["a", "b"], requires_grad=True)
    peft_functional.set_requires_grad(theirs, ["a", "b"], requires_grad=True)
    assert _grads(ours) == _grads(theirs)
    functional.set_requires_grad(ours, "a", requires_grad=False)
    peft_functional.set_requires_grad(theirs, "a", requires_grad=False)
    assert _grads(ours) == _grads(theirs)
    with pytest.raises(AdapterNameError, match="set_requires_grad"):
        functional.set_requires_grad(ours, "missing")
    ours, theirs = ours.to(torch.bfloat16), theirs.to(torch.bfloat16)
    functional.cast_adapter_dtype(ours, "a", autocast_adapter_dtype=False)
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    functional.cast_adapter_dtype(ours, "a")
    peft_functional.cast_adapter_dtype(theirs, "a")
    assert {n: p.dtype for n, p in ours.named_parameters()} == {n: p.dtype for n, p in theirs.named_parameters()}


def test_peft_s_small_helpers():
    labels = torch.tensor([[5, 6, -100, -100], [7, -100, -100, -100]])
    torch.testing.assert_close(surgery.shift_tokens_right(labels, 0, 2), peft.shift_tokens_right(labels, 0, 2))
    with pytest.raises(ValueError, match="pad_token_id"):
        surgery.shift_tokens_right(labels, None, 2)
    ours, theirs = tiny_models.tiny_llama(), tiny_models.tiny_llama()
    for model in (ours, theirs):
        model.lm_head.weight.requires_grad_(False)
    surgery.cast_mixed_precision_params(ours, torch.float16)
    peft.cast_mixed_precision_params(theirs, torch.float16)
    assert {n: p.dtype for n, p in ours.named_parameters()} == {n: p.dtype for n, p in theirs.named_parameters()}
    past = tuple(torch.randn(2, 2, 3, 5, 4) for _ in range(2))   # (n, batch 2, 3 heads, 5 tokens, head_dim 4)
    for (k1, v1), (k2, v2) in zip(surgery.bloom_model_postprocess_past_key_value(past), peft_bloom(past)):
        torch.testing.assert_close(k1, k2, atol=0, rtol=0)
        torch.testing.assert_close(v1, v2, atol=0, rtol=0)
    assert surgery.TRANSFORMERS_MODELS_TO_PREFIX_TUNING_POSTPROCESS_MAPPING == \
        peft.TRANSFORMERS_MODELS_TO_PREFIX_TUNING_POSTPROCESS_MAPPING
