"""Checkpoint keys <-> model keys, as one pure function pair (PEFT's on-disk naming).

The rule is PEFT's: a checkpoint key is the model key without the adapter-name segment.

  model:      base_model.model.<path>.<container>.<adapter>.weight     (a module in a ModuleDict)
  checkpoint: base_model.model.<path>.<container>.weight
  model:      base_model.model.<path>.<container>.<adapter>            (a Parameter in a ParameterDict)
  checkpoint: base_model.model.<path>.<container>
  model:      base_model.model.<path>.modules_to_save.<adapter>.<rest>
  checkpoint: base_model.model.<path>.<rest>
  model:      base_model.<name>.<adapter>                              (state shared by an adapter's layers)
  checkpoint: base_model.<name>

A method may collapse a container whose module holds one `weight` (`collapsed`, from its spec):
  model:      base_model.model.<path>.<collapsed container>.<adapter>.weight
  checkpoint: base_model.model.<path>.<collapsed container>
"""
from __future__ import annotations

import re

SAVED_COPY = "modules_to_save"


def to_checkpoint_key(model_key: str, adapter_name: str, collapsed: tuple[str, ...] = ()) -> str:
    """Remove the adapter name from a model state-dict key (the inverse of `to_model_key`)."""
    a = re.escape(adapter_name)
    key = re.sub(rf"\.{SAVED_COPY}\.{a}\.", ".", model_key, count=1)
    if key != model_key:
        return key
    for container in collapsed:
        key = re.sub(rf"\.{re.escape(container)}\.{a}\.weight$", f".{container}", model_key)
        if key != model_key:
            return key
    if model_key.endswith(f".{adapter_name}"):
        return model_key[: -len(adapter_name) - 1]
    head, _, leaf = model_key.rpartition(".")
    if head.endswith(f".{adapter_name}"):
        return f"{head[: -len(adapter_name) - 1]}.{leaf}"
    return model_key


def to_model_key(checkpoint_key: str, adapter_name: str, container: str, param: str | None,
                 collapsed: tuple[str, ...] = ()) -> str:
    """Insert the adapter name: `container` is the per-adapter attribute the key belongs to, `param` the
    parameter name inside it (None for a bare Parameter). Used to check the inverse property in tests."""
    if container == SAVED_COPY:
        raise ValueError("modules_to_save keys are mapped from the model side")
    prefix = checkpoint_key[: checkpoint_key.rindex(f".{container}")]
    if container in collapsed:
        return f"{prefix}.{container}.{adapter_name}.weight"
    return f"{prefix}.{container}.{adapter_name}" + (f".{param}" if param else "")
