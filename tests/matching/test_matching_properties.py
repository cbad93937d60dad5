"""Property tests for matching: random module trees and random targets agree with PEFT's rule
(`key == t or key.endswith("." + t)`, `re.fullmatch`), and the planner only ever raises SurgeryError."""
from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import surgery
from tests.support import tiny_models as tm
from surgery.errors import ConfigError, PlanError, SurgeryError, TargetNotFoundError
from surgery.matching.selectors import Names, Regex

peft_utils = pytest.importorskip("peft.tuners.tuners_utils")

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEGMENTS = ["q", "k", "v", "q_proj", "v_proj", "proj", "attn", "self_attn", "mlp", "layers", "h", "block",
            "0", "1", "2", "lm_head", "x_q", "q_"]


# -- random module trees ----------------------------------------------------------------------------------
@st.composite
def module_trees(draw):
    """(model, {path: is_leaf}) for a random tree whose leaves are nn.Linear and inner nodes containers."""
    raw = draw(st.lists(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4), min_size=1, max_size=12))
    paths = {".".join(p) for p in raw}
    nodes = set()
    for p in paths:
        parts = p.split(".")
        nodes.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    inner = {n.rpartition(".")[0] for n in nodes if "." in n}
    root = nn.Module()
    for node in sorted(nodes, key=lambda n: n.count(".")):
        parent_path, _, name = node.rpartition(".")
        parent = root.get_submodule(parent_path) if parent_path else root
        parent.add_module(name, nn.Module() if node in inner else nn.Linear(2, 2, bias=False))
    order = [n for n, _ in root.named_modules() if n]
    return root, {n: n not in inner for n in order}


targets_lists = st.lists(st.sampled_from(SEGMENTS + ["self_attn.q_proj", "attn.q", "0.q", "layers.1.v"]),
                         min_size=1, max_size=4, unique=True)
REGEX_PIECES = ["q", "k", "v", "_proj", "proj", ".*", r"\.", r"\d+", "(q|v)", "attn", "layers", "[qk]", ".", "?"]
regexes = st.lists(st.sampled_from(REGEX_PIECES[:-1]), min_size=1, max_size=5).map("".join)


def peft_rule_names(key: str, targets) -> bool:
    return any(key == t or key.endswith("." + t) for t in targets)


def peft_config(**kwargs):
    """A stand-in holding the attributes peft's check_target_module_exists reads."""
    defaults = dict(exclude_modules=None, modules_to_save=None, target_parameters=None, target_modules=None,
                    layers_to_transform=None, layers_pattern=None)
    defaults.update(kwargs)
    return type("Cfg", (), defaults)()


@SETTINGS
@given(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5).map(".".join), targets_lists)
def test_names_selector_agrees_with_peft_rule(key, targets):
    ours = Names(tuple(targets))(key, {})
    assert ours == peft_rule_names(key, targets)
    assert ours == bool(peft_utils.check_target_module_exists(peft_config(target_modules=targets), key))


@SETTINGS
@given(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5).map(".".join), regexes)
def test_regex_selector_agrees_with_fullmatch(key, pattern):
    ours = Regex(pattern)(key, {})
    assert ours == (re.fullmatch(pattern, key) is not None)
    assert ours == bool(peft_utils.check_target_module_exists(peft_config(target_modules=pattern), key))


def expected_plan(tree: dict[str, bool], selected: set[str]):
    """What the planner must do given the reference selection: the paths, or the error class."""
    if not selected:
        return TargetNotFoundError
    if any(not tree[p] for p in selected):
        return PlanError  # a container was selected: LoRA cannot wrap it
    return [p for p in tree if p in selected]


def check_plan(model, tree, cfg, selected, strict_missing: bool):
    want = expected_plan(tree, selected)
    if isinstance(want, list) and not strict_missing:
        assert surgery.plan(model, cfg).paths() == want
        return
    if isinstance(want, list):   # some names matched nothing, others did: as PEFT, planned with a warning
        with pytest.warns(surgery.PeftWarning, match="matched no module"):
            assert surgery.plan(model, cfg).paths() == want
        return
    with pytest.raises(SurgeryError) as info:
        surgery.plan(model, cfg)
    if isinstance(want, list) or want is TargetNotFoundError:
        assert isinstance(info.value, TargetNotFoundError)
    else:
        assert isinstance(info.value, (PlanError, TargetNotFoundError))


@SETTINGS
@given(module_trees(), targets_lists, st.one_of(st.none(), targets_lists))
def test_planner_selects_what_peft_rule_selects_for_name_lists(tree_and_model, targets, excludes):
    model, tree = tree_and_model
    cfg = surgery.LoraConfig(target_modules=list(targets), exclude_modules=excludes)
    oracle = peft_config(target_modules=set(targets), exclude_modules=excludes)
    selected = {p for p in tree if peft_utils.check_target_module_exists(oracle, p)}
    assert selected == {p for p in tree if peft_rule_names(p, targets) and not peft_rule_names(p, excludes or [])}
    # a target name that exists nowhere in the model (a matched container hides its children) warns
    missing = [t for t in targets if not any(peft_rule_names(p, [t]) for p in tree)]
    check_plan(model, tree, cfg, selected, strict_missing=bool(missing))
    # lenient (loading a saved adapter): only an empty selection is an error
    want = expected_plan(tree, selected)
    if isinstance(want, list):
        assert surgery.plan(model, cfg, strict_targets=False).paths() == want


@SETTINGS
@given(module_trees(), regexes, st.one_of(st.none(), regexes))
def test_planner_selects_what_fullmatch_selects_for_regexes(tree_and_model, pattern, exclude):
    model, tree = tree_and_model
    cfg = surgery.LoraConfig(target_modules=pattern, exclude_modules=exclude)
    selected = {p for p in tree if re.fullmatch(pattern, p) and not (exclude and re.fullmatch(exclude, p))}
    oracle = peft_config(target_modules=pattern, exclude_modules=exclude)
    assert selected == {p for p in tree if peft_utils.check_target_module_exists(oracle, p)}
    check_plan(model, tree, cfg, selected, strict_missing=False)


@SETTINGS
@given(module_trees(), targets_lists,
       st.one_of(st.integers(0, 2), st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True)),
       st.one_of(st.none(), st.sampled_from(["layers", "h", "block"]),
                 st.lists(st.sampled_from(["layers", "h", "block"]), min_size=1, max_size=2, unique=True)))
def test_planner_layers_agree_with_peft_rule(tree_and_model, targets, layers, pattern):
    model, tree = tree_and_model
    cfg = surgery.LoraConfig(target_modules=list(targets), layers_to_transform=layers, layers_pattern=pattern)
    oracle = peft_config(target_modules=set(targets), layers_to_transform=layers, layers_pattern=pattern)
    selected = {p for p in tree if peft_utils.check_target_module_exists(oracle, p)}
    try:
        got = surgery.plan(model, cfg, strict_targets=False)
    except ConfigError as exc:
        # surgery refuses indexes that do not exist in the model (peft silently adapts fewer layers)
        assert "layers_to_transform" in str(exc)
        return
    except SurgeryError as exc:
        want = expected_plan(tree, selected)
        assert not isinstance(want, list), exc
        return
    assert got.paths() == [p for p in tree if p in selected]


# -- the planner never raises anything but SurgeryError -----------------------------------------------------
LORA_KEYS = ["r", "target_modules", "exclude_modules", "lora_alpha", "lora_dropout", "fan_in_fan_out", "bias",
             "use_rslora", "modules_to_save", "init_lora_weights", "layers_to_transform", "layers_pattern",
             "rank_pattern", "alpha_pattern", "use_dora", "lora_bias", "target_types", "task_type",
             "inference_mode", "loftq_config", "layer_replication", "peft_type"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["q_proj", "v_proj", "all-linear", "none", "all", "lora_only", "gaussian", "LORA", "CAUSAL_LM",
                     "SEQ_CLS", r".*\.q_proj", "(", "[", "(?i)q", "\\", "*", "Linear", "Embedding", "layers", "h",
                     "lm_head", "mlp", "embed_tokens", ""]),
    st.text(max_size=8),
)
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.one_of(st.text(max_size=6), scalars.filter(
    lambda v: isinstance(v, (str, int, type(None))))), scalars, max_size=3))
configs = st.dictionaries(st.one_of(st.sampled_from(LORA_KEYS), st.text(max_size=10)), values, max_size=6)

_MODELS = {}


def _model(name):
    if name not in _MODELS:
        _MODELS[name] = {"llama": tm.tiny_llama, "gpt2": tm.tiny_gpt2, "conv": tm.tiny_convnet}[name]()
    return _MODELS[name]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs, st.booleans(), st.sampled_from(["llama", "gpt2", "conv"]))
def test_planner_only_raises_surgery_errors(data, with_type, model_name):
    if with_type:
        data = {**data, "peft_type": "LORA"}
    try:
        p = surgery.plan(_model(model_name), data)
    except SurgeryError:
        return
    # a plan that succeeded is coherent
    assert p.paths() and all(r["r"] > 0 and r.added_params > 0 for r in p.rewrites)
    assert all(math.isfinite(r["scaling"]) or not math.isfinite(r["lora_alpha"]) for r in p.rewrites)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["rank_pattern", "alpha_pattern"]),
                       st.dictionaries(st.sampled_from(["q_proj", "(?i)q_proj", "(q", "q)", "\\1", "a{2", "v_proj$",
                                                        r"layers\.0\..*"]), st.integers(1, 4), min_size=1)),
       st.one_of(st.none(), st.lists(st.sampled_from(["lm_head", "(", "a)", "[x", "mlp"]), min_size=1, max_size=2)),
       st.one_of(st.none(), st.sampled_from(["layers", "(", "la[", "h"])))
def test_regex_bearing_fields_never_escape_as_re_error(patterns, modules_to_save, layers_pattern):
    kwargs = dict(patterns, target_modules=["q_proj", "v_proj"], modules_to_save=modules_to_save)
    if layers_pattern is not None:
        kwargs.update(layers_pattern=layers_pattern, layers_to_transform=[0])
    try:
        surgery.plan(_model("llama"), surgery.get_peft_config({"peft_type": "LORA", **kwargs}))
    except SurgeryError:
        pass
