"""surgery.helpers as peft.helpers: rescaled scalings, input dtype casting, signatures, the adapter check."""
import inspect

import peft
import peft.helpers as peft_helpers
import pytest
import torch

import surgery
import surgery.helpers as helpers
from tests.support import tiny_models
from tests.support.helpers import perturb_adapters


def _pair(**kwargs):
    config = dict(r=4, target_modules=["q_proj", "v_proj"], **kwargs)
    ours = surgery.get_peft_model(tiny_models.tiny_llama(), surgery.LoraConfig(**config))
    theirs = peft.get_peft_model(tiny_models.tiny_llama(), peft.LoraConfig(**config))
    perturb_adapters(ours, seed=6)
    theirs.load_state_dict(ours.state_dict())
    return ours.eval(), theirs.eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_rescale_adapter_scale_is_wise_ft_and_restores():
    ours, theirs = _pair()
    ids = tiny_models.token_batch()
    before = _logits(ours, ids)
    with helpers.rescale_adapter_scale(ours, 0.5), peft_helpers.rescale_adapter_scale(theirs, 0.5):
        half = _logits(ours, ids)
        torch.testing.assert_close(half, _logits(theirs, ids), atol=1e-6, rtol=0)
    with helpers.rescale_adapter_scale(ours, 0):
        with ours.disable_adapter():
            base = _logits(ours, ids)
        torch.testing.assert_close(_logits(ours, ids), base, atol=1e-6, rtol=0)   # m = 0: the base model
    torch.testing.assert_close(_logits(ours, ids), before, atol=0, rtol=0)
    # the logits are affine in m for a single LoRA layer; here: m = 0.5 lies between base and fine-tuned
    assert (half - base).abs().max() < (before - base).abs().max()
    with pytest.raises(TypeError, match="multiplier should be of type float"):
        with helpers.rescale_adapter_scale(ours, "2"):
            pass
    with pytest.raises(ValueError, match="only supported for models with `LoraLayer`s"):
        with helpers.rescale_adapter_scale(tiny_models.tiny_llama(), 2.0):
            pass


def test_disable_input_dtype_casting_leaves_inputs_alone_then_restores():
    ours, _ = _pair()
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    seen = []
    hook = layer.lora_A["default"].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    x = torch.randn(1, 3, 32, dtype=torch.float64)
    with helpers.disable_input_dtype_casting(ours):
        assert not layer.cast_input_dtype_enabled
        with pytest.raises(RuntimeError):   # float64 input, float32 LoRA factors: nothing casts
            layer(x.to(torch.float32).double())
    assert layer.cast_input_dtype_enabled
    layer.get_base_layer().double()
    layer(x)
    hook.remove()
    assert seen[-1] == torch.float32   # cast to the adapter's dtype again
    with helpers.disable_input_dtype_casting(ours, active=False):
        assert layer.cast_input_dtype_enabled


def test_update_signature_shows_the_base_model_parameters():
    model = surgery.get_peft_model(tiny_models.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"]))
    # surgery's forward shows the base model's parameters from the start (PEFT's shows *args, **kwargs until
    # update_signature); update_signature then leaves it as it is
    before = inspect.signature(model.forward)
    assert "input_ids" in before.parameters and "adapter_names" in before.parameters
    assert "generation_config" not in inspect.signature(model.generate).parameters
    helpers.update_signature(model)
    assert inspect.signature(model.forward) == before
    assert "generation_config" in inspect.signature(model.generate).parameters
    ids = tiny_models.token_batch()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, model.base_model(input_ids=ids).logits)
    with pytest.raises(ValueError, match="please choose one of"):
        helpers.update_signature(model, "backward")


def test_check_if_peft_model(tmp_path):
    ours, _ = _pair()
    ours.save_pretrained(tmp_path / "adapter")
    tiny_models.tiny_llama().save_pretrained(tmp_path / "base")
    assert helpers.check_if_peft_model(str(tmp_path / "adapter")) == peft_helpers.check_if_peft_model(
        str(tmp_path / "adapter")) is True
    assert helpers.check_if_peft_model(str(tmp_path / "base")) is False
    assert helpers.check_if_peft_model("nobody/nothing-here") is False


def test_dora_caching_never_serves_a_stale_norm():
    """Cached in eval mode, dropped in training; a change of A, B, the base weight or the scaling recomputes."""
    model = surgery.get_peft_model(tiny_models.tiny_llama(), surgery.LoraConfig(
        r=4, target_modules=["q_proj", "embed_tokens"], use_dora=True, init_lora_weights=False)).eval()
    ids = tiny_models.token_batch()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    magnitude = layer.lora_magnitude_vector["default"]
    uncached = _logits(model, ids)
    with helpers.DoraCaching():
        torch.testing.assert_close(_logits(model, ids), uncached, atol=0, rtol=0)
        assert magnitude._dora_cache
        with torch.no_grad():
            layer.lora_A["default"].weight.mul_(2.0)
        changed = _logits(model, ids)
    helpers.DoraCaching()(enabled=False)
    torch.testing.assert_close(changed, _logits(model, ids), atol=0, rtol=0)   # recomputed, not stale
    assert not torch.allclose(changed, uncached)
    assert not magnitude._dora_cache
    with helpers.DoraCaching():
        _logits(model, ids)
        model.train()
        assert not magnitude._dora_cache
        model(ids)
        assert not magnitude._dora_cache   # training never caches
