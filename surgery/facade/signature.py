"""PeftModel.forward under the base model's signature, so code that reads parameter names sees the real ones.

transformers' Trainer keeps the dataset columns whose names `inspect.signature(model.forward)` lists; PEFT gets
away with `forward(*args, **kwargs)` only because the Trainer knows peft's classes and inspects the base model
instead. A surgery PeftModel is inspected directly, so its forward reports, per instance:

    base PeftModel:   the base model's parameters as they are (positionals pass straight through), then
                      `adapter_names` (keyword-only) before **kwargs
    task classes:     PEFT's positional names for the task first (they bind in that order), then the base model's
                      other parameters keyword-only, then `adapter_names` and **kwargs

The function is a copy of the class's forward with `__signature__` set: calls behave exactly as before.
"""
from __future__ import annotations

import inspect
import types

_P = inspect.Parameter


def _parameters(callable_) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(callable_).parameters.values())
    except (TypeError, ValueError):   # a builtin or C forward without a signature
        return []


def merged_forward_signature(own_forward, base_forward) -> inspect.Signature:
    """`own_forward` (bound, the PeftModel's) and `base_forward` (bound, the base model's) -> the signature to show."""
    own = _parameters(own_forward)
    base = [p for p in _parameters(base_forward) if p.name != "adapter_names"]
    positional = [p for p in own if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)]
    if positional:   # a task class: its own positional order is the one calls bind by
        taken = {p.name for p in positional}
        rest = [p.replace(kind=_P.KEYWORD_ONLY) for p in base
                if p.name not in taken and p.kind not in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD)]
        head = positional
    else:            # *args reach the base model as they are
        head = [p for p in base if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD, _P.VAR_POSITIONAL)]
        rest = [p for p in base if p.kind == _P.KEYWORD_ONLY]
    tail = [_P("adapter_names", _P.KEYWORD_ONLY, default=None)]
    if any(p.kind == _P.VAR_KEYWORD for p in own + base):
        tail.append(_P("kwargs", _P.VAR_KEYWORD))
    return inspect.Signature(head + rest + tail)


def with_base_signature(model, attribute: str = "forward"):
    """`model.<attribute>` rebound as a copy of its function that reports the merged signature."""
    bound = getattr(type(model), attribute).__get__(model, type(model))
    func = bound.__func__
    copy = types.FunctionType(func.__code__, func.__globals__, func.__name__, func.__defaults__, func.__closure__)
    copy.__kwdefaults__ = func.__kwdefaults__
    copy.__doc__, copy.__qualname__, copy.__dict__ = func.__doc__, func.__qualname__, dict(func.__dict__)
    signature = merged_forward_signature(bound, getattr(model.get_base_model(), attribute))
    copy.__signature__ = signature.replace(
        parameters=[_P("self", _P.POSITIONAL_OR_KEYWORD)] + list(signature.parameters.values()))
    return types.MethodType(copy, model)
