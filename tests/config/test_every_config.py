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


def _junk():
    return st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=6), st.lists(st.integers(), max_size=2))


def _configs(spec):
    hints = typing.get_type_hints(spec.config_cls)
    fields = sorted(_fields(spec.config_cls) - {"peft_type"})
    value = {name: st.one_of(_typed(hints[name]), _junk()) for name in fields}
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
