"""Checkpoint hook of the prompt-learning methods, PEFT's format:

  prompt_embeddings                  the encoder's output over all virtual tokens (training), or the stored
                                     embedding when the adapter is frozen (inference_mode); loaded into the
                                     encoder's `embedding` (an inference-mode encoder returns it as is)
  base_model.<path>.<param>          modules_to_save copies (e.g. base_model.classifier.weight): PEFT's base
                                     model is the transformer itself here, so no `.model.` segment
"""
from __future__ import annotations

from ...rewrite.modules_to_save import ModulesToSaveWrapper
from ...rewrite.trainable import adapter_layers
from .forward import get_prompt_embedding_to_save

PROMPT_KEY = "prompt_embeddings"


def state_entries(peft_model, adapter_name: str) -> dict:
    """{checkpoint key: (tensor to save, tensor to load into)} of one prompt adapter."""
    config = peft_model.peft_config[adapter_name]
    weight = peft_model.prompt_encoder[adapter_name].embedding.weight
    saved = weight if config.inference_mode else get_prompt_embedding_to_save(peft_model, adapter_name)
    out = {PROMPT_KEY: (saved, weight)}
    for fqn, layer in adapter_layers(peft_model.get_base_model()):
        if isinstance(layer, ModulesToSaveWrapper) and adapter_name in layer.modules_to_save:
            for key, tensor in layer.modules_to_save[adapter_name].state_dict().items():
                out[f"base_model.{fqn}.{key}"] = (tensor, tensor)
    return out
