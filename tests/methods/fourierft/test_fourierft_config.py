"""FourierFTConfig checks (each bad value named), the per-module n_frequency (PEFT's n_frequency_pattern lookup
and its upper bound), PEFT's default targets, and the printed parameter counts."""
from __future__ import annotations

import peft
import pytest
from torch import nn

import surgery
from surgery.errors import ConfigError, PlanError
from tests.support import tiny_models as tm
from tests.support.helpers import MODELS, printed_line


@pytest.mark.parametrize("kwargs, field", [
    (dict(n_frequency=0), "n_frequency"),
    (dict(n_frequency=-5), "n_frequency"),
    (dict(n_frequency=True), "n_frequency"),
    (dict(n_frequency=10.5), "n_frequency"),
    (dict(scaling=float("nan")), "scaling"),
    (dict(scaling=float("inf")), "scaling"),
    (dict(random_loc_seed=None), "random_loc_seed"),
    (dict(random_loc_seed=2 ** 64), "random_loc_seed"),
    (dict(bias="lora"), "bias"),
    (dict(bias=""), "bias"),
    (dict(n_frequency_pattern={"q_proj": 0}), r"n_frequency_pattern\['q_proj'\]"),
    (dict(n_frequency_pattern={"q_proj": 2.5}), r"n_frequency_pattern\['q_proj'\]"),
    (dict(n_frequency_pattern={"(q": 10}), "n_frequency_pattern key"),
    (dict(target_modules="q_proj", layers_to_transform=[0]), "layers_to_transform"),
    (dict(layers_pattern="layers"), "layers_pattern"),
    (dict(layers_to_transform=[-1]), r"layers_to_transform\[...\]"),
    (dict(init_weights=None), "init_weights"),
])
def test_bad_values_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"FourierFTConfig\.{field} = "):
        surgery.FourierFTConfig(**kwargs)


def test_peft_s_bias_modes_are_accepted():
    for bias in ("none", "all", "fourier_only"):
        assert surgery.FourierFTConfig(bias=bias).bias == bias


def test_too_many_frequencies_for_a_module_is_refused_at_plan_time():
    # v_proj is 16 x 32 = 512 entries on the tiny Llama; q_proj 32 x 32
    with pytest.raises(PlanError, match=r"n_frequency = 600 for 'model.layers.0.self_attn.v_proj' \(16 x 32\) "
                                        r"exceeds its 512 weight entries"):
        surgery.plan(tm.tiny_llama(), surgery.FourierFTConfig(target_modules=["q_proj", "v_proj"], n_frequency=600))
    with pytest.raises(ValueError, match="n_frequency"):
        peft.get_peft_model(tm.tiny_llama(), peft.FourierFTConfig(target_modules=["q_proj", "v_proj"], n_frequency=600))
    # a smaller n for v_proj alone makes it fit
    surgery.plan(tm.tiny_llama(), surgery.FourierFTConfig(target_modules=["q_proj", "v_proj"], n_frequency=600,
                                                          n_frequency_pattern={"v_proj": 512}))


@pytest.mark.parametrize("pattern", [
    {"q_proj": 7},
    {"layers.1.self_attn.q_proj": 9, "v_proj": 11},
    {"model.layers.0.self_attn.v_proj": 5},        # the full path: PEFT's fallback lookup by the path itself
    {"q_proj|v_proj": 13},                         # '.*\.q_proj|v_proj$': an alternation, as PEFT embeds it
    {"self_attn.*": 3, "q_proj": 8},               # the first matching key wins
])
def test_n_frequency_pattern_lookup_is_peft_s(pattern):
    kwargs = dict(target_modules=["q_proj", "v_proj"], n_frequency=20, n_frequency_pattern=pattern)
    ours = surgery.get_peft_model(tm.tiny_llama(), surgery.FourierFTConfig(**kwargs))
    theirs = peft.get_peft_model(tm.tiny_llama(), peft.FourierFTConfig(**kwargs))

    def sizes(model):
        return {n: p.numel() for n, p in model.named_parameters() if "fourierft_spectrum" in n}

    assert sizes(ours) == sizes(theirs)
    assert len(set(sizes(ours).values())) > 1 or set(sizes(ours).values()) != {20}
    assert printed_line(ours) == printed_line(theirs)


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert", "t5"])
def test_default_targets_are_peft_s(name):
    builder = MODELS[name][0]
    kwargs = dict(n_frequency=16, fan_in_fan_out=name == "gpt2")
    ours = surgery.get_peft_model(builder(), surgery.FourierFTConfig(**kwargs))
    theirs = peft.get_peft_model(builder(), peft.FourierFTConfig(**kwargs))
    assert sorted(ours.peft_config["default"].target_modules) == sorted(theirs.peft_config["default"].target_modules)
    assert printed_line(ours) == printed_line(theirs)
    assert surgery.plan(builder(), surgery.FourierFTConfig(**kwargs)).trainable_params == \
        ours.get_nb_trainable_parameters()[0]


def test_only_linear_and_conv1d_are_wrapped():
    model = nn.Sequential(nn.Conv2d(3, 3, 1))
    with pytest.raises(PlanError, match="is a Conv2d, which FourierFT cannot wrap; supported: torch.nn.Linear, "
                                        "transformers.pytorch_utils.Conv1D"):
        surgery.get_peft_model(model, surgery.FourierFTConfig(target_modules=["0"], n_frequency=4))
    with pytest.raises((ValueError, TypeError)):
        peft.get_peft_model(nn.Sequential(nn.Conv2d(3, 3, 1)), peft.FourierFTConfig(target_modules=["0"],
                                                                                    n_frequency=4))


def test_default_table_is_peft_s():
    from peft.utils import constants

    from surgery.methods.fourierft.spec import DEFAULT_TARGETS
    assert DEFAULT_TARGETS == constants.TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING
