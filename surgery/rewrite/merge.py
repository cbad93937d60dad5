"""Merge, unmerge and unload over every adapter layer of a model; a failed merge rolls back."""
from __future__ import annotations

import warnings
from typing import Optional

from torch import nn

from ..errors import PeftWarning
from ..progress import bar
from ..quantized.dequantize import dequantize_modules
from .apply import parent_and_attr
from .modules_to_save import ModulesToSaveWrapper
from .trainable import adapter_layers


def _warn_already_merged(layers, adapter_names) -> None:
    """One warning for the model, in PEFT's words, when adapters asked for are merged already (PEFT warns once per
    layer)."""
    again, fresh = set(), set()
    for layer in layers:
        wanted = adapter_names if adapter_names is not None else layer.active_adapters
        for name in wanted:
            (again if name in layer.merged_adapters else fresh).add(name)
    if again and not fresh:
        warnings.warn("All adapters are already merged, nothing to do.", PeftWarning, stacklevel=3)
    elif again:
        warnings.warn(f"Already following adapters were merged {','.join(sorted(again))}. "
                      f"You are now additionally merging {','.join(sorted(fresh))}.", PeftWarning, stacklevel=3)


def merge_adapters(model: nn.Module, adapter_names: Optional[list[str]] = None, safe_merge: bool = False,
                   progress: bool = False) -> None:
    """Fold adapters into the base weights. A safe merge checks every layer on copies first, so a NaN/inf
    refusal leaves the model bit-identical; if a layer fails anyway, the layers merged so far are unmerged
    (within float rounding)."""
    done = []
    layers = [layer for _, layer in adapter_layers(model) if not isinstance(layer, ModulesToSaveWrapper)]
    _warn_already_merged(layers, adapter_names)
    _refuse_before_merging(layers, adapter_names)
    if safe_merge:
        for layer in _progress(layers, progress, "checking the merge"):
            if hasattr(layer, "check_merge"):
                layer.check_merge(adapter_names)
    try:
        for layer in _progress(layers, progress, "merging"):
            before = len(layer.merged_adapters)
            layer.merge(safe_merge=safe_merge, adapter_names=adapter_names)
            if len(layer.merged_adapters) > before:
                done.append((layer, before))
        _warn_requantized(layer for layer, _ in done)
    except Exception:
        for layer, before in reversed(done):
            while len(layer.merged_adapters) > before:
                keep = layer.merged_adapters[:before]
                layer.unmerge()
                if keep:
                    layer.merge(adapter_names=keep)
        raise


def _refuse_before_merging(layers, adapter_names) -> None:
    """A layer that cannot merge at all says so (merge_refusal) before any layer is written."""
    for layer in layers:
        refusal = getattr(layer, "merge_refusal", None)
        wanted = adapter_names if adapter_names is not None else layer.active_adapters
        if refusal is not None and any(n in layer.adapter_names() and n not in layer.merged_adapters for n in wanted):
            error = refusal()
            if error is not None:
                raise error


def _warn_requantized(layers) -> None:
    """One warning for a merge into quantized bases, with what rounding the merged weights back cost."""
    errors = [e for e in (layer.__dict__.pop("_requantize_error", None) for layer in layers) if e is not None]
    if not errors:
        return
    formats = ", ".join(sorted({e[0] for e in errors}))
    worst = max(e[1] for e in errors)
    relative = max(e[2] / e[3] for e in errors if e[3] > 0) if any(e[3] > 0 for e in errors) else 0.0
    warnings.warn(f"Merged into {len(errors)} quantized base layer(s) ({formats}): the merged weights were rounded "
                  f"back to the quantized format, so outputs and generations differ from the unmerged model "
                  f"(measured: max abs error {worst:.3g}, worst layer relative error {relative:.2%} of the weight "
                  f"norm). merge_and_unload(dequantize=True) merges into full-precision weights instead.",
                  PeftWarning, stacklevel=4)


def unmerge_adapters(model: nn.Module) -> None:
    for _, layer in adapter_layers(model):
        layer.unmerge()
    for _, layer in adapter_layers(model):
        layer.__dict__.pop("_requantize_error", None)


def unload(model: nn.Module, merge: bool, safe_merge: bool = False,
           adapter_names: Optional[list[str]] = None, progress: bool = False, dequantize: bool = False) -> nn.Module:
    """Replace every adapter layer by its base layer (merged first when `merge`); returns the model.
    `dequantize`: quantized bases become full-precision layers first, so the merge rounds nothing."""
    if dequantize:
        dequantize_modules(model)
    if merge:
        merge_adapters(model, adapter_names, safe_merge, progress)
    for fqn, layer in list(adapter_layers(model)):
        unwrap(model, fqn, layer)
    return model


def unwrap(model: nn.Module, fqn: str, layer: nn.Module) -> None:
    """Put the module an adapter layer wraps back in its place (a modules_to_save wrapper: its active copy).
    A layer no longer in place was taken out with the layer stacked around it (one per adapted parameter of a
    module: the outer one's unwrap puts the original module back): nothing to do."""
    try:
        parent, attr = parent_and_attr(model, fqn)
    except AttributeError:
        return
    if parent._modules.get(attr) is not layer:
        return
    replacement = layer.unwrapped() if isinstance(layer, ModulesToSaveWrapper) else layer.get_base_layer()
    setattr(parent, attr, replacement)


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    return bar(items, desc=desc)
