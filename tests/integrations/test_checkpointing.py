"""Gradient (activation) checkpointing on LoRA models: the same gradients as without it, for a decoder and an
encoder, reentrant or not; the input-embeddings require-grad fix is what makes the reentrant variant work."""
import pytest
import torch

import surgery
from tests.support import tiny_models as tm


def _attention_mask():
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0
    return mask


CASES = {
    "llama": (lambda: tm.tiny_llama(), ["q_proj", "v_proj"],
              lambda m, x: m(input_ids=x, labels=x).loss),
    "bert_cls": (lambda: tm.tiny_bert_seq_cls(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                 ["query", "value", "dense"],
                 lambda m, x: m(input_ids=x, attention_mask=_attention_mask(), labels=torch.tensor([0, 2])).loss),
}


def _grads(name: str, checkpointing, fix: bool = True):
    build, targets, loss_fn = CASES[name]
    model = surgery.get_peft_model(build(), surgery.LoraConfig(target_modules=targets, r=4, init_lora_weights=False))
    model.train()
    if checkpointing is not None:
        model.gradient_checkpointing_enable({"use_reentrant": checkpointing})
        if not fix:
            model.disable_input_require_grads()
    loss_fn(model, tm.token_batch()).backward()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()
            if p.requires_grad}


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("name", sorted(CASES))
def test_checkpointing_gives_the_same_gradients(name, reentrant):
    reference = _grads(name, None)
    got = _grads(name, reentrant)
    assert got.keys() == reference.keys() and len(got) > 4
    for key in reference:
        assert got[key] is not None, key
        torch.testing.assert_close(got[key], reference[key], atol=1e-6, rtol=1e-5)


def test_without_the_input_fix_reentrant_checkpointing_starves_the_adapters():
    """Documents why the fix exists: frozen embeddings give checkpointed blocks inputs without grad."""
    with pytest.raises(RuntimeError, match="does not require grad"):  # no adapter is reached: no graph at all
        _grads("llama", True, fix=False)


def test_checkpointing_enabled_before_wrapping_gets_the_fix():
    """As PEFT: wrapping a model that already checkpoints installs the input hook."""
    base = tm.tiny_llama()
    base.activation_checkpointing_enable({"use_reentrant": True})
    base.disable_input_require_grads()  # as a model whose checkpointing was switched on without the hook
    model = surgery.get_peft_model(base, surgery.LoraConfig(target_modules=["q_proj", "v_proj"], r=4,
                                                            init_lora_weights=False)).train()
    x = tm.token_batch()
    model(input_ids=x, labels=x).loss.backward()
    reference = _grads("llama", None)
    for key, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[key].grad, grad, atol=1e-6, rtol=1e-5)


def test_disable_turns_checkpointing_and_the_hook_off():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"], r=4))
    model.gradient_checkpointing_enable()
    base = model.get_base_model()
    assert base.is_activation_checkpointing and base._require_grads_hooks
    model.gradient_checkpointing_disable()
    assert not base.is_activation_checkpointing and not base._require_grads_hooks
    with torch.no_grad():
        assert not model.get_input_embeddings()(tm.token_batch()).requires_grad
