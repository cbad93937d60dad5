"""torch.compile (CPU inductor) of LoRA models: the same outputs and gradients as eager, and no stale graph
after switching, disabling, merging or mixing adapters (dynamo guards on the layers' adapter state)."""
import pytest
import torch

import surgery
from tests.support import tiny_models as tm

pytestmark = pytest.mark.filterwarnings("ignore")


def _two_adapters():
    # one decoder layer: every adapter state below is a fresh inductor compile, and CI's caches start cold
    model = surgery.get_peft_model(tm.tiny_llama(num_hidden_layers=1), surgery.LoraConfig(target_modules=["q_proj", "v_proj"], r=4,
                                                                       init_lora_weights=False))
    model.add_adapter("other", surgery.LoraConfig(target_modules=["q_proj", "v_proj"], r=2, init_lora_weights=False))
    return model.eval()


def test_compiled_forward_follows_the_adapter_state():
    torch._dynamo.reset()
    model = _two_adapters()
    x = tm.token_batch()
    names = ["default", "other"]
    with torch.no_grad():
        eager = {"default": model(x).logits}
        model.set_adapter("other")
        eager["other"] = model(x).logits
        model.set_adapter("default")
        with model.disable_adapter():
            eager["base"] = model(x).logits
        eager["mixed"] = model(x, adapter_names=names).logits
    assert not torch.allclose(eager["default"], eager["other"], atol=1e-3)
    compiled = torch.compile(model, backend="inductor")

    def check(expected, **kwargs):
        torch.testing.assert_close(compiled(x, **kwargs).logits, expected, atol=1e-5, rtol=1e-5)

    with torch.no_grad():
        check(eager["default"])
        model.set_adapter("other")
        check(eager["other"])                      # not the graph compiled for "default"
        model.set_adapter("default")
        check(eager["default"])
        with model.disable_adapter():
            check(eager["base"])                   # adapters off: the base model alone
        check(eager["default"])
        check(eager["mixed"], adapter_names=names)  # one adapter per sample
        model.merge_adapter()
        check(eager["default"])                    # merged weights, adapters skipped
        model.unmerge_adapter()
        check(eager["default"])
        layer = model.base_model.model.model.layers[0].self_attn.q_proj
        layer.lora_B["default"].weight.mul_(3)     # in-place weight updates are graph inputs, never constants
        reference = model(x).logits                # `model` itself still runs eagerly
        check(reference)
        assert not torch.allclose(reference, eager["default"], atol=1e-4)


def test_compiled_training_step_gives_eager_gradients():
    torch._dynamo.reset()

    def build():
        return surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(
            target_modules=["q_proj", "v_proj"], r=4, init_lora_weights=False)).train()

    x = tm.token_batch()
    eager, compiled = build(), build()
    eager_loss = eager(input_ids=x, labels=x).loss
    eager_loss.backward()
    loss = torch.compile(compiled, backend="inductor")(input_ids=x, labels=x).loss
    loss.backward()
    torch.testing.assert_close(loss, eager_loss, atol=1e-5, rtol=1e-5)
    grads = {n: p.grad for n, p in compiled.named_parameters() if p.requires_grad}
    assert len(grads) == 8
    for name, p in eager.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4)
