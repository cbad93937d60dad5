"""delete_adapter removes every tensor and per-adapter record of the adapter, for every method surgery has."""
import pytest

import surgery
import surgery.functional as functional
from tests.support import tiny_models

CASES = {
    "lora": ("LoraConfig", dict(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])),
    "dora": ("LoraConfig", dict(r=4, target_modules=["q_proj", "embed_tokens"], use_dora=True)),
    "ia3": ("IA3Config", dict(target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"])),
    "loha": ("LoHaConfig", dict(r=4, target_modules=["q_proj"])),
    "lokr": ("LoKrConfig", dict(r=4, target_modules=["q_proj"])),
    "oft": ("OFTConfig", dict(r=0, oft_block_size=8, target_modules=["q_proj"])),
    "boft": ("BOFTConfig", dict(boft_block_size=4, target_modules=["q_proj"])),
    "vera": ("VeraConfig", dict(r=4, target_modules=["q_proj", "v_proj"])),
    "hra": ("HRAConfig", dict(r=4, target_modules=["q_proj"])),
    "fourierft": ("FourierFTConfig", dict(n_frequency=20, target_modules=["q_proj"])),
    "ln_tuning": ("LNTuningConfig", dict(target_modules=["input_layernorm"])),
    "trainable_tokens": ("TrainableTokensConfig", dict(token_indices=[1, 2], target_modules=["embed_tokens"])),
}


def leftovers(model, name: str) -> list[str]:
    """State-dict keys, and per-adapter dict entries of any module, that still name adapter `name`."""
    found = [k for k in model.state_dict() if f".{name}." in k or k.endswith(f".{name}")]
    for module_name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, dict) and name in value and attr not in ("_parameters", "_buffers", "_modules"):
                found.append(f"{module_name}.{attr}[{name!r}]")
            if isinstance(value, list) and name in value:
                found.append(f"{module_name}.{attr} lists {name!r}")
    return found


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_model_delete_adapter(case):
    config_cls, kwargs = CASES[case]
    cls = getattr(surgery, config_cls)
    model = surgery.get_peft_model(tiny_models.tiny_llama(), cls(**kwargs))
    before = set(model.state_dict())
    model.add_adapter("other", cls(**kwargs))
    model.set_adapter("other")
    model.delete_adapter("other")
    assert leftovers(model, "other") == []
    assert set(model.state_dict()) == before and model.active_adapters == ["default"]


@pytest.mark.parametrize("case", ["lora", "dora", "ia3", "loha", "lokr", "oft", "hra", "fourierft"])
def test_functional_delete_adapter(case):
    config_cls, kwargs = CASES[case]
    model = tiny_models.tiny_llama()
    before = set(functional.inject_adapter_in_model(getattr(surgery, config_cls)(**kwargs), model).state_dict())
    functional.inject_adapter_in_model(getattr(surgery, config_cls)(**kwargs), model, adapter_name="other")
    functional.delete_adapter(model, "other")
    # as PEFT's: the config stays on the model (integrations such as transformers' adapter mixin delete it)
    assert leftovers(model, "other") == [".peft_config['other']"] and set(model.state_dict()) == before
