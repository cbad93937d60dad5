"""Prompt learning: prompt tuning, P-tuning and prefix tuning, as injections of prompt/prefix state.

    embedding.py  PromptEmbedding   virtual-token embeddings (prompt tuning)
    encoder.py    PromptEncoder     embeddings reparameterised by an MLP / LSTM (P-tuning)
    prefix.py     PrefixEncoder     per-layer key/value prefixes (prefix tuning) and their layout
    plan.py       where the state goes (embeddings, the model's KV cache, or the attention modules)
    inject.py     the attention-level prefix injection (forward pre-hooks), for models without a KV cache
    setup.py      add / remove a prompt adapter on a PeftModel
    forward.py    THE prompt-learning forward and generate, shared by every task class
    state.py      the checkpoint hook (PEFT's `prompt_embeddings` key)
    spec.py       the registry entries
"""
