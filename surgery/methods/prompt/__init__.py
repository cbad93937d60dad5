"""Prompt learning: prompt tuning, P-tuning and prefix tuning, as injections of prompt/prefix state.

    prompt tuning (Lester et al. 2021)   inputs_embeds = [P ; E(x)]          P: (T, d) trainable
    P-tuning (Liu et al. 2021)           inputs_embeds = [f(P) ; E(x)]       f: MLP or LSTM over P
    prefix tuning (Li & Liang 2021)      attention_l(q, [K_l ; k], [V_l ; v]) in every layer l,
                                         (K_l, V_l) = g(P)_l: T key/value slots per layer (g: identity or MLP)

    config.py     PromptTuningConfig, PromptEncoderConfig, PrefixTuningConfig (and their enums)
    embedding.py  PromptEmbedding   virtual-token embeddings (prompt tuning)
    encoder.py    PromptEncoder     embeddings reparameterised by an MLP / LSTM (P-tuning)
    prefix.py     PrefixEncoder     per-layer key/value prefixes (prefix tuning) and their layout
    plan.py       where the state goes (embeddings, the model's KV cache, or the attention modules)
    inject.py     the attention-level prefix injection (forward pre-hooks), for models without a KV cache
    state.py      PromptState: every prompt adapter of a PeftModel in one object, and the checkpoint entries
    forward.py    THE prompt-learning forward and generate, shared by every task class
    spec.py       the registry entries
"""
from .config import (PrefixTuningConfig, PromptEncoderConfig, PromptEncoderReparameterizationType,
                     PromptLearningConfig, PromptTuningConfig, PromptTuningInit)
from .embedding import PromptEmbedding
from .encoder import PromptEncoder
from .prefix import (TRANSFORMERS_MODELS_TO_PREFIX_TUNING_POSTPROCESS_MAPPING, PrefixEncoder,
                     bloom_model_postprocess_past_key_value)
from .spec import P_TUNING, PREFIX_TUNING, PROMPT_TUNING

__all__ = ["TRANSFORMERS_MODELS_TO_PREFIX_TUNING_POSTPROCESS_MAPPING", "bloom_model_postprocess_past_key_value",
           "PrefixEncoder", "PrefixTuningConfig", "PromptEmbedding", "PromptEncoder", "PromptEncoderConfig",
           "PromptEncoderReparameterizationType", "PromptLearningConfig", "PromptTuningConfig", "PromptTuningInit"]
