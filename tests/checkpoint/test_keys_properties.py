"""The checkpoint key mapping is a bijection on the keys a model can have (hypothesis round trips)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from surgery.checkpoint.keys import SAVED_COPY, to_checkpoint_key, to_model_key

segment = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True).filter(lambda s: s != SAVED_COPY)
index = st.integers(0, 40).map(str)
paths = st.lists(st.one_of(segment, index), min_size=1, max_size=6).map(".".join)
adapters = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,12}", fullmatch=True).filter(lambda s: s != SAVED_COPY)
containers = st.sampled_from(["lora_A", "lora_B", "lora_embedding_A", "ia3_l", "hada_w1_a", "oft_R",
                              "lora_magnitude_vector", "vera_lambda_b", "ln_tuning_layers"])
COLLAPSED = ("lora_magnitude_vector",)


@settings(max_examples=300, deadline=None)
@given(paths, containers, adapters, st.sampled_from([None, "weight", "bias"]))
def test_layer_keys_round_trip(path, container, adapter, param):
    if container in COLLAPSED:
        param = "weight"
    model_key = f"base_model.model.{path}.{container}.{adapter}" + (f".{param}" if param else "")
    ckpt = to_checkpoint_key(model_key, adapter, COLLAPSED)
    expected = f"base_model.model.{path}.{container}" + (f".{param}" if param and container not in COLLAPSED else "")
    assert ckpt == expected
    assert to_model_key(ckpt, adapter, container, param, COLLAPSED) == model_key


@settings(max_examples=200, deadline=None)
@given(paths, adapters, st.lists(segment, min_size=1, max_size=3).map(".".join))
def test_modules_to_save_keys_drop_the_copy_segment(path, adapter, rest):
    model_key = f"base_model.model.{path}.{SAVED_COPY}.{adapter}.{rest}"
    assert to_checkpoint_key(model_key, adapter) == f"base_model.model.{path}.{rest}"


@settings(max_examples=100, deadline=None)
@given(segment, adapters)
def test_shared_state_keys_drop_the_adapter(name, adapter):
    assert to_checkpoint_key(f"base_model.{name}.{adapter}", adapter) == f"base_model.{name}"
