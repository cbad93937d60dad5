"""Mixed-batch inference: one adapter per sample equals running each sample with its adapter alone."""
import pytest
import torch

import surgery
from tests.support import tiny_models
from surgery.errors import SurgeryError


@pytest.fixture
def three_adapters():
    model = surgery.get_peft_model(tiny_models.tiny_llama(),
                                   surgery.LoraConfig(target_modules="all-linear", r=4, init_lora_weights=False))
    model.add_adapter("b", surgery.LoraConfig(target_modules=["q_proj", "k_proj"], r=2, init_lora_weights=False))
    model.add_adapter("c", surgery.LoraConfig(target_modules=["v_proj"], r=8, init_lora_weights=False,
                                              use_dora=True))
    return model.eval()


def _alone(model, x, name):
    if name == "__base__":
        with model.disable_adapter():
            return model(x).logits
    model.set_adapter(name)
    return model(x).logits


@pytest.mark.parametrize("grad", [False, True])
def test_mixed_batch_equals_per_sample_forwards(three_adapters, grad):
    x = tiny_models.token_batch(batch=5)
    names = ["default", "b", "__base__", "c", "b"]
    with torch.set_grad_enabled(grad):
        mixed = three_adapters(x, adapter_names=names).logits
        for i, name in enumerate(names):
            torch.testing.assert_close(mixed[i], _alone(three_adapters, x[i:i + 1], name)[0], atol=1e-6, rtol=0)


def test_mixed_batch_matches_peft():
    import peft

    x = tiny_models.token_batch(batch=4)
    names = ["a0", "a1", "__base__", "a0"]
    models = []
    for lib in (surgery, peft):
        base = tiny_models.tiny_llama()
        m = lib.get_peft_model(base, lib.LoraConfig(target_modules=["q_proj", "v_proj"], r=4,
                                                   init_lora_weights=False), adapter_name="a0")
        m.add_adapter("a1", lib.LoraConfig(target_modules=["o_proj"], r=2, init_lora_weights=False))
        models.append(m.eval())
    models[0].load_state_dict(models[1].state_dict())
    with torch.no_grad():
        ours, theirs = (m(input_ids=x, adapter_names=names).logits for m in models)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_mixed_batch_errors_name_the_problem(three_adapters):
    x = tiny_models.token_batch(batch=2)
    with pytest.raises(SurgeryError, match="nope"):
        three_adapters(x, adapter_names=["default", "nope"])
    with pytest.raises(SurgeryError, match="Length of `adapter_names` should be the same as the number of inputs"):
        three_adapters(x, adapter_names=["default"])
    three_adapters.train()   # as PEFT: per-sample adapters are for inference, and never over merged weights
    with pytest.raises(SurgeryError, match="training mode"):
        three_adapters(x, adapter_names=["default", "default"])
    three_adapters.eval()
    three_adapters.merge_adapter()
    with pytest.raises(SurgeryError, match="merged adapters, please call `unmerge_adapter` first"):
        three_adapters(x, adapter_names=["default", "default"])
    three_adapters.unmerge_adapter()
    # the per-sample state is cleared even after an error
    torch.testing.assert_close(three_adapters(x).logits, three_adapters(x).logits)


def test_mixed_generate_greedy_matches_single_adapter(three_adapters):
    x = tiny_models.token_batch(batch=2)
    out = three_adapters.generate(input_ids=x, attention_mask=torch.ones_like(x), adapter_names=["b", "b"],
                                  max_new_tokens=4, do_sample=False)
    three_adapters.set_adapter("b")
    ref = three_adapters.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=4, do_sample=False)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("gen", [dict(num_beams=3), dict(do_sample=True, top_k=1, num_return_sequences=2)],
                         ids=["beams", "return-sequences"])
def test_mixed_batch_generation_with_repeated_samples_equals_per_sample_generation(three_adapters, gen):
    """Generation repeats each sample (beams, returned sequences): each copy keeps its sample's adapter."""
    x = tiny_models.token_batch(batch=3)
    names = ["default", "__base__", "b"]
    kwargs = dict(max_new_tokens=4, pad_token_id=0, **gen)
    torch.manual_seed(0)
    mixed = three_adapters.generate(input_ids=x, adapter_names=names, **kwargs)
    copies = mixed.shape[0] // 3
    for i, name in enumerate(names):
        torch.manual_seed(0)
        alone = three_adapters.generate(input_ids=x[i:i + 1], adapter_names=[name], **kwargs)
        torch.testing.assert_close(mixed[i * copies:(i + 1) * copies], alone)   # top_k=1: deterministic


def test_a_wrong_number_of_names_is_still_refused_in_a_forward(three_adapters):
    with pytest.raises(SurgeryError, match="adapter_names"):
        three_adapters(tiny_models.token_batch(batch=4), adapter_names=["default", "b"])
