"""prepare_model_for_kbit_training has exactly PEFT's effects; methods without quantized layers refuse a
quantized base before anything changes; planning and counts read quantized bases right."""
from __future__ import annotations

import peft
import pytest
import torch

import surgery
from surgery.errors import PlanError
from tests.support import tiny_models as tm
from tests.support.quantized_models import quantized


def _effects(model):
    return ({n: (p.dtype, p.requires_grad, type(p).__name__) for n, p in model.named_parameters()},
            model.is_gradient_checkpointing, bool(getattr(model, "_require_grads_hook", None)))


@pytest.mark.parametrize("kind", ["nf4", "int8"])
@pytest.mark.parametrize("kwargs", [{}, {"use_gradient_checkpointing": False},
                                    {"gradient_checkpointing_kwargs": {"use_reentrant": False}}],
                         ids=["default", "no-checkpointing", "non-reentrant"])
def test_prepare_model_for_kbit_training_has_peft_effects(kind, kwargs):
    ours = surgery.prepare_model_for_kbit_training(quantized(kind, dtype=torch.bfloat16,
                                                             compute_dtype=torch.bfloat16), **kwargs)
    theirs = peft.prepare_model_for_kbit_training(quantized(kind, dtype=torch.bfloat16,
                                                            compute_dtype=torch.bfloat16), **kwargs)
    assert _effects(ours) == _effects(theirs)
    params = dict(ours.named_parameters())
    assert params["model.norm.weight"].dtype == torch.float32          # half-precision floats upcast
    assert not any(p.requires_grad for p in params.values())            # everything frozen


def test_qlora_trains_after_preparation_with_checkpointing():
    model = surgery.prepare_model_for_kbit_training(quantized("nf4"))
    model = surgery.get_peft_model(model, surgery.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                             init_lora_weights=False))
    model.train()
    ids = tm.token_batch()
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("config", [surgery.LoHaConfig(target_modules=["q_proj"]),
                                    surgery.OFTConfig(target_modules=["q_proj"], r=4, oft_block_size=0)],
                         ids=["loha", "oft"])
def test_a_method_without_quantized_layers_refuses_before_changing_anything(config):
    model = quantized("nf4")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlanError, match=r"model.layers.0.self_attn.q_proj.*quantized bitsandbytes.nn.Linear4bit "
                                        r"\(bnb-4bit\).*cannot wrap"):
        surgery.get_peft_model(model, config)
    assert all(type(m).__name__ != "Linear" or not hasattr(m, "base_layer") for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_plan_counts_a_4bit_base_as_peft_does():
    model = quantized("nf4")
    plan = surgery.plan(model, surgery.LoraConfig(r=4, target_modules=["q_proj"]))
    theirs = peft.get_peft_model(quantized("nf4"), peft.LoraConfig(r=4, target_modules=["q_proj"]))
    trainable, total = theirs.get_nb_trainable_parameters()
    assert plan.base_params == total - trainable
