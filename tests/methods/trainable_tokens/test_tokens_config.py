"""TrainableTokensConfig validation (each refusal names the field and the value) and plan-time refusals."""
from __future__ import annotations

import pytest

import surgery
from surgery.errors import ConfigError, PlanError
from tests.support import tiny_models as tm


@pytest.mark.parametrize("kwargs, words", [
    (dict(token_indices=[3, -1]), ["token_indices", "-1", ">= 0"]),
    (dict(token_indices=[3, 5, 3]), ["token_indices", "repeats [3]"]),
    (dict(token_indices="3"), ["token_indices", "'3'", "list[int]"]),
    (dict(token_indices=[1.5]), ["token_indices", "1.5"]),
    (dict(token_indices=[1], init_weights="yes"), ["init_weights", "'yes'", "bool"]),
    (dict(token_indices=[1], target_modules="("), ["target_modules", "'('", "regular expression"]),
])
def test_bad_values_are_refused_by_name(kwargs, words):
    with pytest.raises(ConfigError) as info:
        surgery.TrainableTokensConfig(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_no_token_is_accepted_by_the_config_as_peft_and_refused_at_plan_time():
    config = surgery.TrainableTokensConfig()   # PEFT's default token_indices=[]: filled in before use
    with pytest.raises(PlanError, match=r"token_indices = \[\] selects no token"):
        surgery.plan(tm.tiny_llama(), config)


def test_indices_beyond_the_vocabulary_are_refused_at_plan_time():
    with pytest.raises(PlanError, match=r"token_indices \[128, 300\] are out of range for 'model.embed_tokens' "
                                        r"\(Embedding with 128 rows\); valid indices: 0..127"):
        surgery.plan(tm.tiny_llama(), surgery.TrainableTokensConfig(token_indices=[5, 128, 300]))


def test_a_conv1d_target_is_refused_with_the_supported_types():
    with pytest.raises(PlanError, match="Conv1D, which trainable tokens cannot wrap; supported: torch.nn.Embedding, "
                                        r"torch.nn.Linear \(rows = output units\)"):
        surgery.plan(tm.tiny_gpt2(), surgery.TrainableTokensConfig(token_indices=[1], target_modules=["c_attn"]))


def test_the_default_target_is_the_input_embedding_as_in_peft():
    for builder, name in [(tm.tiny_llama, "model.embed_tokens"), (tm.tiny_gpt2, "transformer.wte"),
                          (tm.tiny_t5, "shared"), (tm.tiny_bert, "embeddings.word_embeddings")]:
        plan = surgery.plan(builder(), surgery.TrainableTokensConfig(token_indices=[1]))
        assert plan.config["target_modules"] == name and plan.paths()[0] == name


def test_a_model_without_input_embeddings_falls_back_to_embed_tokens():
    with pytest.raises(surgery.SurgeryError, match="embed_tokens"):
        surgery.plan(tm.tiny_embed_mlp(), surgery.TrainableTokensConfig(token_indices=[1]))
    assert surgery.plan(tm.tiny_embed_mlp(), surgery.TrainableTokensConfig(token_indices=[1],
                                                                         target_modules=["emb"])).paths() == ["emb"]
