"""Configs: PEFT's field names and defaults, get_peft_config, validation errors, YAML/JSON loading, no mutation."""
from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest

import surgery
from tests.support import tiny_models as tm
from surgery.methods.lora.config import LORA_INERT_KEYS
from surgery.errors import ConfigError, SurgeryError

peft = pytest.importorskip("peft")

# The dict of PEFT's API reference for get_peft_config, exactly as written there.
API_REFERENCE_DICT = {
    "peft_type": "LORA",
    "task_type": "SEQ_2_SEQ_LM",
    "inference_mode": False,
    "r": 8,
    "target_modules": ["q", "v"],
    "lora_alpha": 32,
    "lora_dropout": 0.1,
    "fan_in_fan_out": False,
    "enable_lora": None,
    "bias": "none",
}


# -- field names and defaults ----------------------------------------------------------------------------
def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def test_lora_config_defaults_equal_peft_for_every_shared_field():
    ours, theirs = surgery.LoraConfig(), peft.LoraConfig()
    shared = set(_fields(surgery.LoraConfig)) & set(_fields(peft.LoraConfig))
    # the fields users write: all must be shared
    for key in ("r", "target_modules", "exclude_modules", "lora_alpha", "lora_dropout", "fan_in_fan_out", "bias",
                "use_rslora", "modules_to_save", "init_lora_weights", "layers_to_transform", "layers_pattern",
                "rank_pattern", "alpha_pattern", "use_dora", "lora_bias", "task_type", "peft_type",
                "inference_mode", "base_model_name_or_path", "revision", "auto_mapping"):
        assert key in shared, key
    def plain(value):   # sub-configs (runtime_config) are each library's own class: compared by their fields
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

    differing = {k: (getattr(ours, k), getattr(theirs, k)) for k in shared
                 if plain(getattr(ours, k)) != plain(getattr(theirs, k))}
    # peft stamps its own version on construction; surgery writes the format version when saving.
    assert set(differing) <= {"peft_version"}, differing
    assert ours.peft_type == theirs.peft_type == "LORA"


def test_lora_config_field_names_are_peft_names_or_declared():
    ours, theirs = set(_fields(surgery.LoraConfig)), set(_fields(peft.LoraConfig))
    assert ours - theirs == {"target_types"}  # the one documented surgery extension
    # every PEFT field surgery does not model is accepted at its default (inert), never silently unknown
    assert theirs - ours <= set(LORA_INERT_KEYS), sorted(theirs - ours - set(LORA_INERT_KEYS))


def test_to_dict_has_exactly_peft_keys_and_values():
    kwargs = dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.05, use_rslora=True,
                  rank_pattern={"q_proj": 2}, alpha_pattern={"v_proj": 4}, bias="lora_only", task_type="CAUSAL_LM")
    ours = surgery.LoraConfig(**kwargs).to_dict()
    theirs = peft.LoraConfig(**kwargs).to_dict()
    assert set(ours) == set(theirs)
    theirs = json.loads(json.dumps(theirs, default=sorted))  # sets -> lists, enums -> strings
    diff = {k: (ours[k], theirs[k]) for k in ours if k != "peft_version" and ours[k] != theirs[k]
            and not (isinstance(ours[k], list) and sorted(ours[k]) == sorted(theirs[k]))}
    assert diff == {}


def test_a_config_peft_wrote_loads_strictly_with_the_same_values():
    written = json.loads(json.dumps(
        peft.LoraConfig(r=4, target_modules=["q", "v"], lora_alpha=32, task_type="SEQ_2_SEQ_LM").to_dict(),
        default=sorted))
    cfg = surgery.LoraConfig.from_dict(written, strict=True)
    assert (cfg.r, cfg.lora_alpha, sorted(cfg.target_modules), cfg.task_type) == (4, 32, ["q", "v"], "SEQ_2_SEQ_LM")


def test_to_dict_from_dict_round_trip():
    cfg = surgery.LoraConfig(r=4, target_modules=r".*\.q_proj", exclude_modules=["lm_head"], lora_alpha=7.5,
                             layers_pattern=None, rank_pattern={"q": 2}, init_lora_weights="gaussian",
                             task_type="CAUSAL_LM", use_dora=True)
    again = surgery.LoraConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()
    assert again == cfg


# -- get_peft_config ---------------------------------------------------------------------------------------
def test_get_peft_config_accepts_the_api_reference_dict_exactly_as_written():
    data = copy.deepcopy(API_REFERENCE_DICT)
    cfg = surgery.get_peft_config(data)
    assert type(cfg) is surgery.LoraConfig
    assert data == API_REFERENCE_DICT  # not mutated
    assert cfg.peft_type == surgery.PeftType.LORA and cfg.task_type == surgery.TaskType.SEQ_2_SEQ_LM
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules, cfg.bias, cfg.fan_in_fan_out,
            cfg.inference_mode) == (8, 32, 0.1, {"q", "v"}, "none", False, False)   # a set, as PEFT
    # and real peft builds the same values from it (peft 0.21.2 itself refuses the legacy `enable_lora` key
    # of its own reference example, so it is dropped for the oracle only)
    theirs = peft.get_peft_config({k: v for k, v in API_REFERENCE_DICT.items() if k != "enable_lora"})
    for key in ("r", "lora_alpha", "lora_dropout", "bias", "fan_in_fan_out", "inference_mode", "task_type"):
        assert getattr(cfg, key) == getattr(theirs, key), key
    assert sorted(cfg.target_modules) == sorted(theirs.target_modules)


@pytest.mark.parametrize("peft_type", ["LORA", surgery.PeftType.LORA])
def test_get_peft_config_picks_the_class_from_peft_type(peft_type):
    assert type(surgery.get_peft_config({"peft_type": peft_type, "r": 2})) is surgery.LoraConfig


@pytest.mark.parametrize("data, words", [
    ({"r": 8}, ["peft_type"]),
    ({"peft_type": "NOPE"}, ["peft_type", "NOPE"]),
    ({"peft_type": "POLY"}, ["POLY", "LORA"]),                 # a PEFT method not implemented: said so
    ({"peft_type": "LORA", "task_type": "CAUSAL"}, ["task_type", "CAUSAL", "CAUSAL_LM"]),
])
def test_get_peft_config_refuses_bad_types(data, words):
    with pytest.raises(ConfigError) as info:
        surgery.get_peft_config(data)
    for word in words:
        assert word in str(info.value)


# -- validation errors name the key and the value ---------------------------------------------------------
@pytest.mark.parametrize("key, suggestion", [
    ("lora_alpah", "lora_alpha"), ("targets_modules", "target_modules"), ("lora_droput", "lora_dropout"),
    ("use_rslor", "use_rslora"), ("rank_patern", "rank_pattern"),
])
def test_unknown_key_is_refused_with_the_closest_key(key, suggestion):
    with pytest.raises(ConfigError) as info:
        surgery.get_peft_config({"peft_type": "LORA", key: 8})
    msg = str(info.value)
    assert repr(key) in msg and "8" in msg
    assert f"did you mean {suggestion!r}" in msg


@pytest.mark.parametrize("key, value", [
    ("r", "8"), ("r", 8.0), ("r", True), ("r", None), ("lora_alpha", "32"), ("lora_dropout", "0.1"),
    ("target_modules", 5), ("target_modules", ["q", 3]), ("bias", 1), ("use_dora", "yes"),
    ("layers_to_transform", "1"), ("layers_to_transform", [True]), ("rank_pattern", {"q": "2"}),
    ("rank_pattern", {"q": 2.5}), ("modules_to_save", "classifier"), ("init_lora_weights", "kaiming"),
    ("init_lora_weights", "pissa_niter_x"), ("init_lora_weights", "pissa_niter_"), ("init_lora_weights", 1),
    ("loftq_config", 4), ("loftq_config", "nf4"),
    ("inference_mode", 1), ("fan_in_fan_out", "False"),
])
def test_wrong_type_is_refused_naming_key_and_value(key, value):
    with pytest.raises(ConfigError) as info:
        surgery.get_peft_config({"peft_type": "LORA", key: value})
    msg = str(info.value)
    assert key in msg and repr(value) in msg
    with pytest.raises(ConfigError):
        surgery.LoraConfig(**{key: value})  # the class validates on construction, too


@pytest.mark.parametrize("key, value", [
    ("r", 0), ("r", -4), ("lora_dropout", -0.1), ("lora_dropout", 1.5), ("lora_dropout", math.nan),
    ("lora_alpha", 0), ("lora_alpha", -8), ("lora_alpha", math.nan), ("bias", "some"), ("bias", "None"),
    ("layers_to_transform", -1), ("layers_to_transform", [0, -2]),
])
def test_out_of_range_value_is_refused_naming_key_and_value(key, value):
    with pytest.raises(ConfigError) as info:
        surgery.get_peft_config({"peft_type": "LORA", key: value})
    msg = str(info.value)
    bad = value[-1] if isinstance(value, list) else value  # a list names its offending element
    assert key in msg and repr(bad) in msg


@pytest.mark.parametrize("key, value", [("rank_pattern", {"q_proj": 0}), ("alpha_pattern", {"v_proj": -1})])
def test_out_of_range_pattern_value_is_refused(key, value):
    with pytest.raises(ConfigError) as info:
        surgery.LoraConfig(**{key: value})
    assert key in str(info.value) and list(value)[0] in str(info.value)


@pytest.mark.parametrize("key, value", [
    ("target_modules", "model.(q|v"), ("exclude_modules", "[lm_head"), ("rank_pattern", {"q_proj(": 2}),
    ("alpha_pattern", {"*v": 2}),
    # valid alone, invalid where the matcher embeds them: refused up front, never a bare re.error later
    ("rank_pattern", {"(?i)q_proj": 2}), ("modules_to_save", ["classifier("]), ("layers_pattern", "lay[ers"),
    ("layers_pattern", ["h", "(?i)layers"]),
])
def test_bad_regex_is_refused_naming_key_and_pattern(key, value):
    data = {"peft_type": "LORA", key: value}
    if key == "layers_pattern":
        data["layers_to_transform"] = [0]
    with pytest.raises(ConfigError) as info:
        surgery.get_peft_config(data)
    msg = str(info.value)
    pattern = value if isinstance(value, str) else list(value)[-1]
    assert key in msg and repr(pattern) in msg and "regular expression" in msg


@pytest.mark.parametrize("kwargs", [
    dict(target_modules=r".*\.q_proj", layers_to_transform=[0]),   # PEFT refuses this combination too
    dict(target_modules=["q"], layers_pattern="layers"),           # a pattern without indexes
])
def test_inconsistent_options_are_refused(kwargs):
    with pytest.raises(ConfigError):
        surgery.LoraConfig(**kwargs)


def test_peft_type_of_another_method_is_replaced_with_a_warning_as_peft_does():
    with pytest.warns(surgery.PeftWarning, match="peft_type = 'IA3' is replaced by 'LORA'"):
        config = surgery.LoraConfig(peft_type="IA3")
    assert config.peft_type == peft.LoraConfig(peft_type="IA3").peft_type == "LORA"


def test_unsupported_peft_options_are_fields_at_default_and_refused_by_name():
    config = surgery.LoraConfig()
    assert config.use_qalora is False and config.to_dict()["megatron_core"] == "megatron.core"
    with pytest.raises(surgery.errors.UnsupportedOptionError, match="use_qalora = True.*not supported"):
        surgery.LoraConfig(use_qalora=True)


def test_inert_peft_keys_accepted_at_default_refused_otherwise():
    cfg = surgery.LoraConfig.from_dict({"r": 4, "loftq_config": {}, "use_bdlora": None, "use_qalora": False})
    assert cfg.r == 4 and cfg.to_dict()["loftq_config"] == {}
    with pytest.raises(ConfigError, match="alora_invocation_tokens"):
        surgery.LoraConfig.from_dict({"alora_invocation_tokens": [1, 2]})


def test_lenient_from_dict_drops_unknown_keys_with_one_warning_in_peft_words():
    with pytest.warns(surgery.PeftWarning) as record:
        cfg = surgery.LoraConfig.from_dict({"r": 4, "from_the_future": 1, "lora_alhpa": 2}, strict=False)
    assert cfg.r == 4 and len(record) == 1
    text = str(record[0].message)
    assert text.startswith("Unexpected keyword arguments ['from_the_future', 'lora_alhpa'] for class LoraConfig, "
                           "these are ignored.") and "did you mean 'lora_alpha'" in text
    with pytest.raises(ConfigError, match="from_the_future"):
        surgery.LoraConfig.from_dict({"r": 4, "from_the_future": 1})


def test_config_errors_are_value_errors_and_surgery_errors():
    assert issubclass(ConfigError, SurgeryError) and issubclass(SurgeryError, ValueError)


# -- files ------------------------------------------------------------------------------------------------
def test_load_config_from_yaml(tmp_path):
    path = tmp_path / "lora.yaml"
    path.write_text("peft_type: LORA\ntask_type: CAUSAL_LM\nr: 16\nlora_alpha: 32\n"
                    "target_modules: [q_proj, v_proj]\nlayers_to_transform: [0, 1]\n")
    cfg = surgery.load_config(path)
    assert type(cfg) is surgery.LoraConfig
    assert (cfg.r, cfg.lora_alpha, cfg.target_modules, cfg.layers_to_transform, cfg.task_type) == (
        16, 32, {"q_proj", "v_proj"}, [0, 1], "CAUSAL_LM")
    assert surgery.load_config(str(path)).to_dict() == cfg.to_dict()


def test_load_config_from_json_and_adapter_dir(tmp_path):
    data = dict(API_REFERENCE_DICT)
    (tmp_path / "cfg.json").write_text(json.dumps(data))
    cfg = surgery.load_config(tmp_path / "cfg.json")
    assert cfg.to_dict() == surgery.get_peft_config(data).to_dict()
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    assert surgery.load_config(tmp_path).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("name, text, words", [
    ("bad.yaml", "peft_type: LORA\nr: [1, 2\n", ["YAML"]),
    ("bad.json", '{"peft_type": "LORA", "r": }', ["JSON"]),
    ("list.yaml", "- peft_type: LORA\n", ["mapping"]),
    ("typo.yaml", "peft_type: LORA\nlora_alpah: 8\n", ["lora_alpah", "lora_alpha"]),
    ("range.yaml", "peft_type: LORA\nr: 0\n", ["r", "0"]),
    ("notype.yaml", "r: 8\n", ["peft_type"]),
])
def test_load_config_bad_files(tmp_path, name, text, words):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        surgery.load_config(path)
    for word in words:
        assert word in str(info.value)


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="neither a file nor a bundled preset"):
        surgery.load_config(tmp_path / "nope.yaml")


def test_yaml_safe_loader_refuses_python_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("peft_type: LORA\nr: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError):
        surgery.load_config(path)


def test_load_config_copies_a_config_object():
    cfg = surgery.LoraConfig(r=4, target_modules=["q"])
    loaded = surgery.load_config(cfg)
    loaded.target_modules.add("v")
    assert cfg.target_modules == {"q"}


# -- the user's config is never mutated --------------------------------------------------------------------
@pytest.mark.parametrize("builder, kwargs", [
    (tm.tiny_llama, dict(target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")),
    (tm.tiny_llama, dict(target_modules="all-linear", task_type="CAUSAL_LM")),
    (tm.tiny_llama, dict(target_modules=["all-linear"])),
    (tm.tiny_llama, dict(target_types=["Linear"], exclude_modules=["lm_head"])),
    (tm.tiny_llama, dict(task_type="CAUSAL_LM")),  # default targets filled in for llama
    (tm.tiny_bert_seq_cls, dict(target_modules="all-linear", task_type="SEQ_CLS")),  # classifier added
    (tm.tiny_bert_qa, dict(target_modules=["query"], task_type="QUESTION_ANS", modules_to_save=["pooler"])),
])
def test_get_peft_model_and_plan_never_mutate_the_users_config(builder, kwargs):
    cfg = surgery.LoraConfig(**kwargs)
    before = copy.deepcopy(cfg.to_dict())
    before_fields = {f.name: copy.deepcopy(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    surgery.plan(builder(), cfg)
    model = surgery.get_peft_model(builder(), cfg)
    model.add_adapter("second", cfg)
    assert cfg.to_dict() == before
    assert {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)} == before_fields
    assert model.peft_config["default"] is not cfg


def test_saved_config_resolves_all_linear_but_user_config_keeps_it():
    cfg = surgery.LoraConfig(target_modules="all-linear", task_type="CAUSAL_LM")
    model = surgery.get_peft_model(tm.tiny_llama(), cfg)
    assert cfg.target_modules == "all-linear"
    resolved = model.peft_config["default"].target_modules
    assert sorted(resolved) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
