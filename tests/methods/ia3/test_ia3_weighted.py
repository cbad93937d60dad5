"""IA3 add_weighted_adapter equals PEFT's: the same vectors, frozen and inactive, the union of the targets."""
import peft
import pytest
import torch

import surgery
from tests.support import tiny_models
from tests.support.helpers import perturb_adapters


def _pair(configs: dict):
    models = []
    for lib in (surgery, peft):
        model = None
        for name, kwargs in configs.items():
            config = lib.IA3Config(**kwargs)
            if model is None:
                model = lib.get_peft_model(tiny_models.tiny_llama(), config, adapter_name=name)
            else:
                model.add_adapter(name, config)
        models.append(model)
    ours, theirs = models
    perturb_adapters(ours, seed=11)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


SAME = dict(target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"])
OTHER = dict(target_modules=["v_proj", "up_proj"], feedforward_modules=["up_proj"])


@pytest.mark.parametrize("second", [SAME, OTHER], ids=["same-targets", "other-targets"])
def test_weighted_vectors_and_outputs_equal_peft(second):
    ours, theirs = _pair({"a": SAME, "b": second, "c": SAME})
    for model in (ours, theirs):
        model.add_weighted_adapter(["a", "b", "c"], [0.5, 1.5, -0.7], "mix")
        model.add_weighted_adapter(["a"], [2.0], "single")
    ours_sd = {k: v for k, v in ours.state_dict().items() if "ia3_l" in k}
    theirs_sd = {k: v for k, v in theirs.state_dict().items() if "ia3_l" in k}
    assert sorted(ours_sd) == sorted(theirs_sd)
    for key in ours_sd:
        torch.testing.assert_close(ours_sd[key], theirs_sd[key], atol=0, rtol=0)
    assert ours.active_adapters == theirs.active_adapters == ["a"]
    assert not any(p.requires_grad for n, p in ours.named_parameters() if ".mix" in n or ".single" in n)
    assert sorted(ours.peft_config["mix"].target_modules) == sorted(theirs.peft_config["mix"].target_modules)
    assert sorted(ours.peft_config["mix"].feedforward_modules) == \
        sorted(theirs.peft_config["mix"].feedforward_modules)
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    torch.testing.assert_close(layer.ia3_l["single"], 2.0 * layer.ia3_l["a"], atol=0, rtol=0)   # the math
    ids = tiny_models.token_batch()
    for name in ("mix", "single"):
        ours.set_adapter(name)
        theirs.set_adapter(name)
        with torch.no_grad():
            torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-6, rtol=0)


def test_bad_arguments_are_refused_before_anything_changes():
    ours, _ = _pair({"a": SAME, "b": SAME})
    before = set(ours.state_dict())
    with pytest.raises(ValueError, match="Adapter missing does not exist"):
        ours.add_weighted_adapter(["a", "missing"], [1.0, 1.0], "mix")
    with pytest.raises(ValueError, match="one weight per adapter: got 1 weight"):
        ours.add_weighted_adapter(["a", "b"], [1.0], "mix")
    regex = surgery.IA3Config(target_modules=".*q_proj", feedforward_modules=[])
    ours.add_adapter("regex", regex)
    with pytest.raises(ValueError, match="same type for target and feedforward modules"):
        ours.add_weighted_adapter(["a", "regex"], [1.0, 1.0], "mix")
    assert "mix" not in ours.peft_config
    assert {k for k in ours.state_dict() if ".regex" not in k} == before
    ours.add_weighted_adapter(["a"], [1.0], "a")   # an existing name: left as it is (PEFT)
    assert ours.active_adapters == ["a"]
