"""Every registered method's config class gets what LoraConfig has, against peft's class of the same name:
PEFT's field names and defaults, saved keys equal to PEFT's, validation that only ever raises ConfigError
(fuzzed with hypothesis from the field annotations), an unknown key answered with the closest valid key,
and a dict round trip. A new method is covered by registering it.
"""
from __future__ import annotations

import dataclasses
import os
import typing
import warnings

import peft
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import surgery
from surgery.errors import ConfigError, SurgeryError
from surgery.methods.registry import get_method, implemented_types
from tests.support import tiny_models as tm

EXAMPLES = 1000 if os.environ.get("SURGERY_LONG_TESTS") == "1" else 60
# surgery's documented extensions (resolved before saving, so saved configs stay PEFT's)
EXTENSIONS = {"target_types",
              "postprocess_past_key_value_function"}   # PrefixTuningConfig: a run-time callable, never saved
# peft config classes that cannot be built without arguments: the smallest valid ones
REQUIRED: dict[str, dict] = {"TrainableTokensConfig": {"token_indices": [0]}}
SPECS = [get_method(t) for t in implemented_types()]
IDS = [s.config_cls.__name__ for s in SPECS]


def _peft_class(spec):
    return peft.PEFT_TYPE_TO_CONFIG_MAPPING[spec.peft_type.value]


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_same_class_name_fields_and_defaults_as_peft(spec):
    theirs_cls = _peft_class(spec)
    assert spec.config_cls.__name__ == theirs_cls.__name__
    kwargs = REQUIRED.get(theirs_cls.__name__, {})
    ours, theirs = spec.config_cls(**kwargs), theirs_cls(**kwargs)
    ours_fields, theirs_fields = _fields(spec.config_cls), _fields(theirs_cls)
    assert ours_fields - theirs_fields <= EXTENSIONS, sorted(ours_fields - theirs_fields)
    unmodelled = theirs_fields - ours_fields
    assert unmodelled <= set(spec.config_cls._inert_keys), f"PEFT fields neither modelled nor inert: {unmodelled}"
    shared = ours_fields & theirs_fields - {"peft_version"}
    differing = {k: (getattr(ours, k), getattr(theirs, k)) for k in shared
                 if _plain(getattr(ours, k)) != _plain(getattr(theirs, k))}
    assert differing == {}
    assert str(ours.peft_type) == str(theirs.peft_type.value if hasattr(theirs.peft_type, "value") else theirs.peft_type)


def _plain(value):
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):   # a sub-config: compared by its fields
        return (type(value).__name__, dataclasses.asdict(value))
    value = getattr(value, "value", value)
    return sorted(value) if isinstance(value, (set, frozenset)) else value


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_saved_keys_are_peft_keys(spec):
    kwargs = REQUIRED.get(spec.config_cls.__name__, {})
    ours = spec.config_cls(**kwargs).to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _peft_class(spec)(**kwargs).to_dict()
    assert set(ours) == set(theirs)
    assert type(spec.config_cls.from_dict(ours)) is spec.config_cls
    assert spec.config_cls.from_dict(ours).to_dict() == ours


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_an_unknown_key_gets_the_closest_valid_key(spec):
    field = next(f for f in sorted(_fields(spec.config_cls)) if len(f) > 4 and f not in EXTENSIONS)
    typo = field[:-1] + ("x" if field[-1] != "x" else "y")
    with pytest.raises(ConfigError, match=f"did you mean '{field}'"):
        spec.config_cls.from_dict({**REQUIRED.get(spec.config_cls.__name__, {}), typo: 1})


def _typed(annotation):
    """A strategy of values that fit `annotation` (roughly), to reach past the type checks."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return st.one_of(*[_typed(a) for a in args])
    if origin is typing.Literal:
        return st.sampled_from(args)
    if annotation is type(None):
        return st.none()
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(-2, 64)
    if annotation is float:
        return st.one_of(st.floats(-1, 2), st.just(float("nan")))
    if annotation is str:
        return st.sampled_from(["q_proj", "v_proj", "all-linear", "(", ".*", "layers", "", "embed_tokens"])
    if origin in (list, tuple, set):
        return st.lists(_typed(args[0]) if args else st.integers(-2, 8), max_size=3)
    if origin is dict:
        return st.dictionaries(st.sampled_from(["q_proj", "(", "v_proj$"]), _typed(args[1]) if args else st.integers(),
                               max_size=2)
    return st.none()


# Values the annotations cannot describe, drawn besides them: init_lora_weights' "pissa_niter_<N>" family (valid
# and not), PEFT's inits surgery refuses by name, and LoftQ's, CorDA's and EVA's settings (a sub-config or its dict,
# good and bad).
FIELD_VALUES = {
    ("LoraConfig", "init_lora_weights"): st.sampled_from(
        ["pissa_niter_0", "pissa_niter_16", "pissa_niter_x", "pissa_niter_-1", "OLoRA", "eva", "corda", "mica"]),
    ("LoraConfig", "loftq_config"): st.one_of(
        st.builds(surgery.LoftQConfig, loftq_bits=st.sampled_from([2, 4, 8]), loftq_iter=st.integers(-1, 3)),
        st.fixed_dictionaries({}, optional={"loftq_bits": st.sampled_from([4, 8, 3, True]),
                                            "loftq_iter": st.integers(-1, 3), "bits": st.just(4)})),
    ("LoraConfig", "corda_config"): st.one_of(
        st.builds(surgery.CordaConfig, corda_method=st.sampled_from(["ipm", "kpm", "fast"]), verbose=st.booleans()),
        st.fixed_dictionaries({}, optional={"corda_method": st.sampled_from(["ipm", "kpm", 3]),
                                            "cache_file": st.sampled_from([None, "cache.pt", 5]),
                                            "from_a_newer_peft": st.just(1)})),
    ("LoraConfig", "eva_config"): st.one_of(
        st.builds(surgery.EvaConfig, rho=st.floats(1, 4), tau=st.floats(0, 1), whiten=st.booleans()),
        st.fixed_dictionaries({}, optional={"rho": st.one_of(st.floats(-1, 3), st.just(float("nan")), st.just("2")),
                                            "tau": st.one_of(st.floats(-0.5, 1.5), st.booleans()),
                                            "label_mask_value": st.sampled_from([-100, 0, -100.0]),
                                            "from_a_newer_peft": st.just(1)}),
        st.sampled_from([3, "eva", [1.0]])),
}


def _junk():
    return st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=6), st.lists(st.integers(), max_size=2))


def _configs(spec):
    hints = typing.get_type_hints(spec.config_cls)
    fields = sorted(_fields(spec.config_cls) - {"peft_type"})
    value = {name: st.one_of(_typed(hints[name]), _junk(),
                             *[v for k, v in FIELD_VALUES.items() if k == (spec.config_cls.__name__, name)])
             for name in fields}
    return st.fixed_dictionaries({}, optional={name: value[name] for name in fields})


_LLAMA = tm.tiny_llama()


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_fuzzed_configs_only_ever_raise_config_errors_and_round_trip(spec):
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_configs(spec))
    def check(data):
        try:
            config = spec.config_cls.from_dict(data)
        except ConfigError:
            return
        again = spec.config_cls.from_dict(config.to_dict())
        assert again.to_dict() == config.to_dict()
        try:
            surgery.plan(_LLAMA, config)   # planning a valid config fails only with a SurgeryError, if at all
        except SurgeryError:
            pass

    check()


_INIT_FIELDS = {   # LoRA's initialisation fields and the ones PEFT checks them against, drawn mostly valid
    "init_lora_weights": st.one_of(st.sampled_from([True, False, "gaussian", "pissa", "olora", "OLoRA", "orthogonal",
                                                    "loftq", "corda", "eva"]),
                                   FIELD_VALUES[("LoraConfig", "init_lora_weights")]),
    "loftq_config": FIELD_VALUES[("LoraConfig", "loftq_config")],
    "corda_config": FIELD_VALUES[("LoraConfig", "corda_config")],
    "eva_config": FIELD_VALUES[("LoraConfig", "eva_config")],
    "r": st.integers(1, 40), "lora_bias": st.booleans(), "use_rslora": st.booleans(), "use_dora": st.booleans(),
    "rank_pattern": st.dictionaries(st.sampled_from(["q_proj", "down_proj"]), st.integers(1, 40), max_size=1),
    "target_modules": st.sampled_from([["q_proj", "v_proj"], ["down_proj"], "all-linear", ["embed_tokens"]]),
}


def test_fuzzed_lora_inits_validate_round_trip_and_plan_or_refuse_with_surgery_errors():
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.fixed_dictionaries({}, optional=_INIT_FIELDS))
    def check(data):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # PEFT's warnings (loftq_config ignored, rsLoRA with patterns)
            try:
                config = surgery.LoraConfig.from_dict(data)
            except ConfigError:
                return
        assert surgery.LoraConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
        assert isinstance(config.loftq_config, dict)
        assert config.corda_config is None or isinstance(config.corda_config, surgery.CordaConfig)
        assert isinstance(config.eva_config, surgery.EvaConfig) if config.init_lora_weights == "eva" else True
        try:
            surgery.plan(_LLAMA, config)   # odd ranks, ranks above a layer's size, embeddings: PlanErrors
        except SurgeryError:
            pass

    check()


_EVA_VALUES = {"rho": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 5), _junk()),
               "tau": st.one_of(st.floats(-1, 2), st.just(float("nan")), st.integers(-1, 2), _junk()),
               "use_label_mask": st.one_of(st.booleans(), _junk()), "label_mask_value": st.one_of(st.integers(), _junk()),
               "whiten": st.one_of(st.booleans(), _junk()), "adjust_scaling_factors": st.one_of(st.booleans(), _junk())}


def test_fuzzed_eva_configs_are_valid_or_refused_with_config_errors_never_looser_than_peft():
    """EvaConfig: every value is either accepted, within PEFT's ranges (rho >= 1, 0 <= tau <= 1) and accepted by
    peft too, or refused with a ConfigError naming the field; numbers out of PEFT's ranges are refused by both."""
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.fixed_dictionaries({}, optional=_EVA_VALUES))
    def check(data):
        try:
            ours = surgery.EvaConfig(**data)
        except ConfigError as error:
            assert any(f"EvaConfig.{key} = " in str(error) for key in data), str(error)
            numbers = all(isinstance(data.get(k, 1.0), (int, float)) and not isinstance(data.get(k, 1.0), bool)
                          and data.get(k, 1.0) == data.get(k, 1.0) for k in ("rho", "tau"))
            if numbers and not (data.get("rho", 2.0) >= 1 and 0 <= data.get("tau", 0.99) <= 1):
                with pytest.raises(ValueError):
                    peft.EvaConfig(**data)
            return
        assert ours.rho >= 1 and 0 <= ours.tau <= 1
        theirs = peft.EvaConfig(**data)
        assert dataclasses.asdict(ours) == dataclasses.asdict(theirs)
        lora = surgery.LoraConfig(init_lora_weights="eva", eva_config=dataclasses.asdict(ours))
        assert lora.eva_config == ours and surgery.LoraConfig.from_dict(lora.to_dict()).eva_config == ours

    check()


# LoRA's structural options, drawn mostly valid against the tiny Llama (2 layers, 128 tokens; untied and tied):
# out-of-range ids and ranges, repeats, empty maps, names that select nothing, ties with different ids.
_STRUCTURE_VALUES = {
    "trainable_token_indices": st.one_of(
        st.lists(st.integers(-1, 130), max_size=3),
        st.dictionaries(st.sampled_from(["embed_tokens", "lm_head", "q_proj", "nothing"]),
                        st.lists(st.integers(0, 130), max_size=2), max_size=2)),
    "layer_replication": st.lists(st.lists(st.integers(-1, 3), min_size=1, max_size=3), max_size=3),
    "ensure_weight_tying": st.booleans(),
}
FIELD_VALUES.update({("LoraConfig", name): values for name, values in _STRUCTURE_VALUES.items()})
_STRUCTURE_FIELDS = {**_STRUCTURE_VALUES,
                     "target_modules": st.sampled_from([["q_proj"], ["q_proj", "embed_tokens"], ["lm_head"]]),
                     "modules_to_save": st.sampled_from([None, ["embed_tokens"], ["lm_head"]])}
_TIED_LLAMA = tm.tiny_llama(tie_word_embeddings=True)


def test_fuzzed_lora_structure_options_validate_round_trip_and_plan_without_changing_the_model():
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.fixed_dictionaries({}, optional=_STRUCTURE_FIELDS))
    def check(data):
        try:
            config = surgery.LoraConfig.from_dict(data)
        except ConfigError:
            return
        assert surgery.LoraConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
        for model in (_LLAMA, _TIED_LLAMA):
            layers, types = model.model.layers, [type(m) for m in model.modules()]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # PEFT's weight-tying warnings
                try:
                    plan = surgery.plan(model, config)
                except SurgeryError:
                    continue
                finally:   # a plan is a dry run, whatever it finds
                    assert model.model.layers is layers and len(layers) == 2
                    assert [type(m) for m in model.modules()] == types
            sources = [i for start, end in (config.layer_replication or []) for i in range(start, end)]
            assert [c["sources"] for c in plan.structure] == ([sources] if sources else [])
            assert all(0 <= i < 128 for a in plan.auxiliaries for i in a.params["token_indices"])

    check()
