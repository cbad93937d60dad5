"""AdapterLayer: what every adapter-wrapped layer shares, whatever the method.

    parent.q_proj = AdapterLayer(base_layer=<original module>)
                      ├── base_layer            the untouched original
                      ├── <containers>[name]    per-adapter parameters (ModuleDict / ParameterDict)
                      └── state: active adapters, merged adapters, disabled flag

Subclasses list their per-adapter containers in `adapter_layer_names` (trainable) and
`other_param_names` (plain per-adapter dicts such as r, scaling). Adapter parameters are
everything on the layer except `base_layer`: selection is structural, never by substring.
"""
from __future__ import annotations

from typing import Callable, Iterable, Union

import torch
from torch import nn

from ..errors import AdapterNameError, MergeError
from ..graph.kinds import in_out_features
from ..quantized import backend_of


def lazy_container(name: str, factory: Callable[[], nn.Module]) -> property:
    """A per-adapter container created on first use: most layers never hold embedding factors or DoRA
    magnitudes, and skipping two or three empty ModuleDicts per layer is a third of injection time on 70B."""
    def get(self):
        holder = self._modules.get(name)
        if holder is None:
            holder = self._modules[name] = factory()
        return holder
    return property(get, doc=f"The {name} container (created on first use).")


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether `a` is `b`'s data (the same memory, shape and dtype)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.dtype == b.dtype


class AdapterLayer(nn.Module):
    _surgery_adapter_layer = True
    adapter_layer_names: tuple[str, ...] = ()
    other_param_names: tuple[str, ...] = ()
    # PEFT's switch (helpers.disable_input_dtype_casting): False leaves inputs in their dtype, for setups whose
    # own hooks cast (diffusers' layerwise casting)
    cast_input_dtype_enabled: bool = True
    # PEFT prints most layers as "<method>.<Class>(" (get_layer_status's module_type); a few it prints bare
    repr_with_method: bool = True

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        # Written straight into the module's dicts: nn.Module.__setattr__'s type checks cost more than
        # everything else here, for thousands of layers on a big model.
        self._modules["base_layer"] = base_layer
        # PEFT's in_features / out_features on every adapter layer (None for layers without such sizes)
        in_f, out_f = in_out_features(base_layer) or (None, None)
        self.__dict__.update(_active_adapters=[], merged_adapters=[], _disable_adapters=False,
                             in_features=in_f, out_features=out_f)

    def adapter_containers(self):
        """(name, holder) for each per-adapter container this layer has created (lazy ones may not exist)."""
        for container in self.adapter_layer_names:
            holder = self._modules.get(container)
            if holder is not None:
                yield container, holder

    def mark_new_adapter(self, adapter_name: str, config) -> None:
        """After update_layer built an adapter: its parameters train if the config does and the adapter is (or
        will be, as the first one) active; it becomes active when it is the layer's first. Only the new
        adapter's flags change here: the model-wide pass (mark_trainable) settles the rest."""
        trainable = not config.inference_mode and (not self._active_adapters or adapter_name in self._active_adapters)
        for _, holder in self.adapter_containers():
            param = holder._parameters.get(adapter_name)       # a ParameterDict entry
            module = holder._modules.get(adapter_name)          # a ModuleDict entry: its own parameters
            params = [param] if param is not None else list(module._parameters.values()) if module is not None else []
            for p in params:
                if p is not None:
                    p.requires_grad_(trainable)
        if not self._active_adapters:
            self.__dict__["_active_adapters"] = [adapter_name]

    # -- PEFT-compatible views -------------------------------------------------------------------------
    def _cast_input_dtype(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x in the adapter's dtype, unless input casting is disabled."""
        if not self.cast_input_dtype_enabled or x.dtype == dtype:
            return x
        return x.to(dtype)

    def get_base_layer(self) -> nn.Module:
        base = self.base_layer
        while getattr(base, "_surgery_adapter_layer", False):
            base = base.base_layer
        return base

    @property
    def weight(self):
        return self.get_base_layer().weight

    @property
    def bias(self):
        return self.get_base_layer().bias

    # -- the base weight as a dense tensor (quantized bases: surgery/quantized) ----------------------------
    def dense_base_weight(self) -> torch.Tensor:
        """The base weight in its own layout as a plain tensor: the parameter's data, or for a quantized base
        its dequantized copy (in the dtype the base computes in)."""
        base = self.get_base_layer()
        backend = backend_of(base)
        return base.weight.data if backend is None else backend.dequantize(base)

    def store_base_weight(self, weight: torch.Tensor) -> None:
        """Make `weight` the base weight (a merge's result); a quantized base stores it requantized."""
        base = self.get_base_layer()
        backend = backend_of(base)
        if backend is not None:
            backend.requantize(base, weight)
            # what storing it quantized cost: the merge reports it (rewrite/merge.py); in place, no temporaries
            error = backend.dequantize(base).to(weight.dtype).sub_(weight)
            low, high = torch.aminmax(error)   # 20x faster than an inf-norm on the CPU
            self.__dict__["_requantize_error"] = (backend.name, max(-low.item(), high.item()),
                                                  error.float().norm().item(), weight.float().norm().item())
        elif not _same_storage(weight, base.weight):   # a plain base written in place needs nothing more
            base.weight.data = weight

    def base_float_dtype(self) -> torch.dtype:
        """The dtype adapters are built in: the base weight's, or for a quantized base torch's default (as PEFT:
        its factors are created float32 and only moved to the base's device)."""
        weight = self.get_base_layer().weight
        return weight.dtype if weight.is_floating_point() else torch.get_default_dtype()

    @property
    def active_adapters(self) -> list[str]:
        return self._active_adapters

    @property
    def _active_adapter(self) -> list[str]:   # PEFT's attribute name (code and tests set it directly)
        return self._active_adapters

    @_active_adapter.setter
    def _active_adapter(self, names) -> None:
        self._active_adapters = [names] if isinstance(names, str) else list(names)

    @property
    def active_adapter(self) -> Union[str, list[str]]:
        return self._active_adapters[0] if len(self._active_adapters) == 1 else self._active_adapters

    @property
    def disable_adapters(self) -> bool:
        return self._disable_adapters

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def adapter_names(self) -> list[str]:
        """Every adapter this layer holds, in insertion order."""
        names: dict[str, None] = {}
        for _, holder in self.adapter_containers():
            for key in holder.keys():
                names[key] = None
        return list(names)

    def _all_available_adapter_names(self) -> list[str]:
        """PEFT's name: every adapter this layer holds, sorted."""
        names = set(self.adapter_names())
        for attr in self.other_param_names:
            names.update(getattr(self, attr, {}).keys())
        return sorted(names)

    def _get_available_adapters(self) -> set[str]:
        return set(self.adapter_names())

    # -- state changes ---------------------------------------------------------------------------------
    def set_adapter(self, adapter_names: Union[str, Iterable[str]], trainable: bool = True) -> None:
        """Activate these adapters; only active adapters' parameters require grad (when trainable)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        present = set()
        for _, holder in self.adapter_containers():
            for key in holder.keys():
                present.add(key)
                value = holder[key]
                flag = trainable and key in names
                if isinstance(value, nn.Parameter):
                    value.requires_grad_(flag)
                elif isinstance(value, torch.Tensor):   # a buffer (frozen by nature)
                    continue
                else:  # a small module (lora_A, lora_B, a DoRA magnitude): its own parameters only
                    for param in value._parameters.values():
                        if param is not None:
                            param.requires_grad_(flag)
        self._active_adapters = [n for n in names if n in present]

    def runs_base_only(self) -> bool:
        """Whether the base layer alone gives this layer's output: adapters disabled (a merged layer is unmerged
        first, so the base weights are the original ones again) or merged into the base weights."""
        if self._disable_adapters and self.merged_adapters:
            self.unmerge()
        return self._disable_adapters or bool(self.merged_adapters)

    def enable_adapters(self, enabled: bool) -> None:
        """Enable or disable every adapter of this layer (disabled: the base layer alone runs).

        As PEFT, a disabled layer's adapter parameters stop requiring grad; enabling it again restores the
        flags they had (PEFT makes the active ones trainable, even for an adapter loaded for inference)."""
        if not enabled and self.merged:
            self.unmerge()
        if not enabled and not self._disable_adapters:
            params = [p for _, holder in self.adapter_containers() for p in holder.parameters()]
            self.__dict__["_grads_before_disable"] = [(p, p.requires_grad) for p in params]
            for p in params:
                p.requires_grad_(False)
        elif enabled and self._disable_adapters:
            for p, flag in self.__dict__.pop("_grads_before_disable", []):
                p.requires_grad_(flag)
        self._disable_adapters = not enabled

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.adapter_names():
            raise AdapterNameError(f"adapter {adapter_name!r} is not on this layer; it has {self.adapter_names()}")
        if adapter_name in self.merged_adapters:
            self.unmerge()
        holders = [holder for _, holder in self.adapter_containers()]
        holders += [getattr(self, name) for name in self.other_param_names]
        for holder in holders:
            if adapter_name in holder:
                del holder[adapter_name]
        self._active_adapters = [n for n in self._active_adapters if n != adapter_name]

    def _layer_name(self) -> str:
        return getattr(self, "_surgery_fqn", type(self.get_base_layer()).__name__)

    def _non_finite(self, name: str) -> MergeError:
        """The safe merge's refusal, in PEFT's words first (code matches them), then which layer and that the
        layer was left as it was."""
        return MergeError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken: merging it "
                          f"into {self._layer_name()} would produce NaN/inf weights; the layer was left unmerged")

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        """Whether convert_to_lora can express this layer's adapter as LoRA: layers whose adapter adds a
        weight delta (W' = W + ΔW, PEFT's criterion) say True; the rest cannot."""
        return False

    # -- merge protocol (method-specific parts) --------------------------------------------------------
    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def unmerge(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names()}, active={self._active_adapters}, merged={self.merged_adapters}"

    def __repr__(self) -> str:
        # PEFT prints its layers as "<method>.<Class>(...)", e.g. "lora.Linear(": get_layer_status reports it
        # as module_type, and users grep printed models for it. The method is the layer's package.
        parts = type(self).__module__.split(".")
        method = parts[2] if len(parts) > 3 and parts[:2] == ["surgery", "methods"] and self.repr_with_method else ""
        return f"{method}.{super().__repr__()}" if method else super().__repr__()
