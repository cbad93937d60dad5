"""Clear errors for impossible prompt-learning combinations; the model is unchanged after each refusal."""
from __future__ import annotations

import pytest
import torch

import surgery
from tests.support import tiny_models as tm
from tests.support.prompt_cases import inputs, word_tokenizer  # noqa: F401 (a fixture)
from surgery.errors import ConfigError, PlanError, SurgeryError


def _fingerprint(model):
    return ([type(m).__name__ for m in model.modules()], sum(len(m._forward_pre_hooks) for m in model.modules()),
            {k: v.clone() for k, v in model.state_dict().items()})


def _same(a, b):
    return a[0] == b[0] and a[1] == b[1] and all(torch.equal(a[2][k], b[2][k]) for k in a[2])


@pytest.mark.parametrize("cls,fields,match", [
    (surgery.PromptTuningConfig, {"num_virtual_tokens": 0}, "num_virtual_tokens"),
    (surgery.PromptTuningConfig, {"num_virtual_tokens": 4, "num_transformer_submodules": 3}, "num_transformer"),
    (surgery.PromptTuningConfig, {"prompt_tuning_init": "WORDS"}, "prompt_tuning_init"),
    (surgery.PromptTuningConfig, {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": "hi"},
     "tokenizer_name_or_path"),
    (surgery.PromptTuningConfig, {"prompt_tuning_init": "TEXT", "tokenizer_name_or_path": "x"},
     "prompt_tuning_init_text"),
    (surgery.PromptTuningConfig, {"tokenizer_kwargs": {"use_fast": True}}, "only used with"),
    (surgery.PromptEncoderConfig, {"encoder_reparameterization_type": "GRU"}, "MLP, LSTM"),
    (surgery.PromptEncoderConfig, {"encoder_dropout": 1.5}, "encoder_dropout"),
    (surgery.PromptEncoderConfig, {"encoder_num_layers": 0}, "encoder_num_layers"),
    (surgery.PrefixTuningConfig, {"token_dim": 30, "num_attention_heads": 4}, "multiple of"),
    (surgery.PrefixTuningConfig, {"init_weights": "ones"}, "init_weights"),
    (surgery.PrefixTuningConfig, {"postprocess_past_key_value_function": 3}, "postprocess"),
])
def test_bad_config_values_fail_on_construction(cls, fields, match):
    with pytest.raises(ConfigError, match=match):
        cls(**fields)


def _refused(model, config, error, match):
    before = _fingerprint(model)
    with pytest.raises(error, match=match):
        surgery.get_peft_model(model, config)
    assert _same(before, _fingerprint(model))


def test_prefix_tuning_without_attention_layers_is_built_but_does_not_run():
    """As PEFT: the adapter is built (and can be saved), running it is a clear error that changes nothing."""
    config = surgery.PrefixTuningConfig(num_virtual_tokens=2, token_dim=16, num_layers=1, num_attention_heads=2)
    model = surgery.get_peft_model(tm.tiny_embed_mlp(), config)
    before = _fingerprint(model)
    with pytest.raises(PlanError, match="no attention module"):
        model(input_ids=torch.tensor([[1, 2, 3]]))
    assert _same(before, _fingerprint(model))


@pytest.mark.parametrize("builder,config", [
    (tm.tiny_gpt2, surgery.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=128)),
    (tm.tiny_gpt2, surgery.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=200)),
    (tm.tiny_bert_seq_cls, surgery.PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=128)),
])
def test_num_virtual_tokens_that_overflow_the_positions_are_refused(builder, config):
    _refused(builder(), config, PlanError, "overflows max_position_embeddings = 128")


def test_positions_are_checked_per_call_and_rotary_models_have_no_limit():
    model = surgery.get_peft_model(tm.tiny_gpt2(), surgery.PromptTuningConfig(task_type="CAUSAL_LM",
                                                                              num_virtual_tokens=100))
    with pytest.raises(SurgeryError, match="exceed the model's 128 positions"):
        model(input_ids=tm.token_batch(seq=40))
    model(input_ids=tm.token_batch(seq=28))
    surgery.get_peft_model(tm.tiny_llama(), surgery.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=200))


@pytest.mark.parametrize("builder,config,match", [
    (tm.tiny_gpt2, surgery.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2, token_dim=48),
     "input embeddings"),
    (tm.tiny_gpt2, surgery.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2, num_layers=5), "num_layers"),
    (tm.tiny_gpt2, surgery.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2, num_attention_heads=8),
     "heads"),
    (tm.tiny_bert_seq_cls, surgery.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2, num_layers=3),
     "num_layers"),
])
def test_architecture_fields_that_do_not_fit_are_refused(builder, config, match):
    _refused(builder(), config, PlanError, match)


def test_num_virtual_tokens_is_required():
    _refused(tm.tiny_gpt2(), surgery.PromptTuningConfig(task_type="CAUSAL_LM"), ConfigError, "num_virtual_tokens")


def test_prefix_tuning_refuses_gradient_checkpointing():
    model = tm.tiny_llama()
    model.gradient_checkpointing_enable()
    _refused(model, surgery.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2), PlanError,
             "gradient checkpointing")


def test_prompt_and_module_adapters_do_not_mix():
    model = surgery.get_peft_model(tm.tiny_llama(), surgery.PromptTuningConfig(task_type="CAUSAL_LM",
                                                                               num_virtual_tokens=2))
    with pytest.raises(ConfigError, match="cannot combine"):
        model.add_adapter("lora", surgery.LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="cannot combine"):
        model.add_adapter("prefix", surgery.PrefixTuningConfig(num_virtual_tokens=2))
    lora = surgery.get_peft_model(tm.tiny_llama(), surgery.LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="cannot combine"):
        lora.add_adapter("prompt", surgery.PromptTuningConfig(num_virtual_tokens=2))
    assert list(model.peft_config) == ["default"] and list(lora.peft_config) == ["default"]


def test_calls_that_make_no_sense_for_prompt_learning():
    bert = surgery.get_peft_model(tm.tiny_bert_seq_cls(), surgery.PrefixTuningConfig(task_type="SEQ_CLS",
                                                                                     num_virtual_tokens=2))
    with pytest.raises(ConfigError, match="generate"):
        bert.generate(**inputs("bert"))
    gpt2 = surgery.get_peft_model(tm.tiny_gpt2(), surgery.PrefixTuningConfig(task_type="CAUSAL_LM",
                                                                             num_virtual_tokens=2))
    for call, match in [(lambda: gpt2(**inputs("gpt2"), task_ids=torch.zeros(2)), "task_ids"),
                        (lambda: gpt2(**inputs("gpt2"), adapter_names=["default", "default"]), "adapter_names"),
                        (lambda: gpt2.merge_and_unload(), "nothing to merge"),
                        (lambda: gpt2(**inputs("gpt2"), cache=gpt2.get_prompt(2)), "do not pass one"),
                        (lambda: gpt2.get_prompt_embedding_to_save("nope"), "nope")]:
        with pytest.raises(ConfigError, match=match):
            call()
    lora = surgery.get_peft_model(tm.tiny_gpt2(), surgery.LoraConfig(target_modules=["c_attn"]))
    with pytest.raises(ConfigError, match="get_prompt is only for PROMPT_TUNING, P_TUNING, PREFIX_TUNING adapters"):
        lora.get_prompt(2)


def test_text_init_longer_than_the_prompt_keeps_its_first_tokens_with_a_warning(word_tokenizer):
    """As PEFT: the prompt starts from the text's first tokens; unlike PEFT, a warning says so."""
    config = surgery.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, prompt_tuning_init="TEXT",
                                        prompt_tuning_init_text="classify the sentiment of this review",
                                        tokenizer_name_or_path=str(word_tokenizer))
    base = tm.tiny_gpt2()
    with pytest.warns(surgery.PeftWarning, match="6 tokens long .* only 3 virtual tokens.* first 3 tokens"):
        model = surgery.get_peft_model(base, config)
    from transformers import AutoTokenizer
    ids = AutoTokenizer.from_pretrained(str(word_tokenizer))(config.prompt_tuning_init_text)["input_ids"][:3]
    prompt = model.get_prompt_embedding_to_save("default")
    torch.testing.assert_close(prompt, base.get_input_embeddings().weight[ids].detach())


def test_a_missing_tokenizer_is_a_clear_error(tmp_path):
    config = surgery.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, prompt_tuning_init="TEXT",
                                        prompt_tuning_init_text="hello", tokenizer_name_or_path=str(tmp_path / "no"))
    _refused(tm.tiny_gpt2(), config, ConfigError, "no tokenizer could be loaded")
