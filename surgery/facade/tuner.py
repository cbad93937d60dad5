"""The tuner model (PeftModel.base_model): holds the rewritten transformer as `.model`.

It exists so state-dict keys read `base_model.model.<path>` exactly as PEFT's, it forwards every unknown
attribute to the model underneath, and it keeps the per-adapter state some methods share across all their
layers (`base_model.<name>.<adapter>`, where PEFT keeps them). Each method names its
subclass (PEFT's `<Method>Model`) in its spec: the class PEFT users see and check with isinstance.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Optional, Union

import torch
from torch import nn

from ..config.base import PeftConfig
from ..errors import AdapterNameError, PlanError
from ..graph.embedding_ties import tied_with_input_embedding
from ..methods.registry import get_method, model_api
from ..naming import validate_adapter_name
from ..plan.model import Plan
from ..plan.parameters import check_same_parameter_targets
from ..plan.planner import plan_with_config
from ..rewrite.apply import apply_plan
from ..rewrite.dtypes import upcast_adapter
from ..rewrite.modules_to_save import check_one_copy_each
from ..rewrite.merge import merge_adapters, unload, unmerge_adapters, unwrap
from ..rewrite.trainable import adapter_layers, flags_changed, mark_trainable, set_adapters_requires_grad
from .buffers import SharedBuffers


class TunerModel(nn.Module):
    """PEFT's BaseTuner: the rewritten model plus its adapters' configs, plans and which adapters are active.

    `LoraModel(model, config, "default")` (PEFT's low-level use) injects the adapter at once; the façade
    passes its own {name: config} dict and adds adapters through plan_adapter / apply_adapter.
    """

    @staticmethod
    def get_model_config(model: nn.Module) -> dict:
        """The model's config as a dict (PEFT's helper); {"model_type": "custom"} for a model without one."""
        config = getattr(model, "config", None)
        if config is None:
            return {"model_type": "custom"}
        if hasattr(config, "to_dict"):
            return config.to_dict()
        return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config

    prefix: str = ""   # the method's parameter-name prefix (PEFT's tuner attribute, e.g. "lora_")
    uses_shared_state: bool = False   # PEFT's flag: state shared across layers lives on the tuner (VeRA)

    def __init__(self, model: nn.Module, peft_config, adapter_name: str = "default", low_cpu_mem_usage: bool = False,
                 state_dict: Optional[dict] = None, **kwargs):
        super().__init__()
        self.model = model
        injects = isinstance(peft_config, PeftConfig)
        # inject_adapter_in_model again on an adapted model adds to its configs, as PEFT's tuner does
        earlier = model.__dict__.get("peft_config") if injects else None
        self.peft_config: dict = (earlier if isinstance(earlier, dict) else {}) if injects else peft_config
        self.plans: dict[str, Plan] = {}
        self.__dict__["_active"] = [adapter_name]
        if injects:
            self.peft_config[adapter_name] = peft_config
            self.inject_adapter(model, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
        # as PEFT: the adapted model carries its configs (get_peft_model_state_dict(model) and integrations read
        # them there); unload takes them off again
        model.peft_config = self.peft_config

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        if "_modules" not in self.__dict__:   # before nn.Module.__init__ (DeepSpeed's init wrapper asks hasattr)
            raise AttributeError(name)
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            api = model_api().get(name)   # PEFT's model-wide calls that a method owns
            return functools.partial(api, self) if api is not None else getattr(self.model, name)

    # -- adapters ----------------------------------------------------------------------------------------
    @property
    def active_adapters(self) -> list[str]:
        return list(self._active)

    @property
    def active_adapter(self) -> Union[str, list[str]]:
        return self._active[0] if len(self._active) == 1 else list(self._active)

    @active_adapter.setter
    def active_adapter(self, names: Union[str, list[str]]) -> None:
        self.__dict__["_active"] = [names] if isinstance(names, str) else list(names)

    def _get_module_names_tied_with_embedding(self) -> list[str]:
        """PEFT's BaseTuner method: the modules tied to the input embedding (graph/embedding_ties.py)."""
        return tied_with_input_embedding(self.model)

    @property
    def targeted_module_names(self) -> list[str]:
        """The modules the adapters rewrote (PEFT's attribute), in model order per adapter."""
        return list(dict.fromkeys(path for plan in self.plans.values() for path in plan.paths()))

    @property
    def targeted_parameter_names(self) -> list[str]:
        """The parameters the adapters adapt ("<module>.<parameter>", PEFT's attribute, from target_parameters)."""
        return list(dict.fromkeys(key for plan in self.plans.values() for key in plan.parameter_paths()))

    def plan_adapter(self, adapter_name: str, config: PeftConfig, strict: bool = True, heads=None,
                     checkpoint_shapes: Optional[dict] = None):
        """(plan, resolved config) of a new adapter; nothing changes yet."""
        validate_adapter_name(adapter_name)
        if adapter_name in self.plans:
            raise AdapterNameError(f"adapter {adapter_name!r} already exists; delete_adapter({adapter_name!r}) "
                                   f"first or choose another name")
        check_same_parameter_targets(config, self.peft_config)
        return plan_with_config(self.model, config, adapter_name, strict_targets=strict, heads=heads,
                                checkpoint_shapes=checkpoint_shapes)

    def apply_adapter(self, plan: Plan, config: PeftConfig, active: list[str], autocast_adapter_dtype: bool = True):
        """Rewrite the model as `plan` says and record the adapter."""
        apply_plan(self.model, plan, config, active=active, holder=self)
        if autocast_adapter_dtype and get_method(config.peft_type).upcasts_adapters:
            upcast_adapter(self.model, plan.adapter_name)
        self.plans[plan.adapter_name] = plan
        self.peft_config[plan.adapter_name] = config

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict: Optional[dict] = None) -> None:
        """PEFT's BaseTuner.inject_adapter: add the adapter whose config is self.peft_config[adapter_name].
        With `state_dict`, the modules its keys name are adapted (its values are not loaded)."""
        config = self.peft_config.pop(adapter_name)
        spec = get_method(config.peft_type)
        if spec.injector is not None:
            raise PlanError(f"{spec.label} adds inputs, not layers: use get_peft_model(model, config)")
        shapes = None
        if state_dict is not None and getattr(config, "target_parameters", None):   # PEFT's words
            self.peft_config[adapter_name] = config
            raise PlanError("Trying to inject a PEFT adapter from a state_dict but the PEFT config uses "
                            "`target_parameters`. This is not supported -- when using `target_parameters`, please "
                            "inject the adapter without the state_dict.")
        if state_dict is not None:
            config = config.copy()
            config.target_modules = _modules_named_by(state_dict, self.prefix)
            shapes = {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}
        try:
            plan, resolved = self.plan_adapter(adapter_name, config, checkpoint_shapes=shapes)
        except Exception:
            self.peft_config[adapter_name] = config
            raise
        first = not self.plans
        self.apply_adapter(plan, resolved, active=[adapter_name] if first else self.active_adapters,
                           autocast_adapter_dtype=autocast_adapter_dtype)
        if first:
            self.active_adapter = adapter_name
        mark_trainable(self.model, resolved, self.active_adapters, plan.paths())
        if low_cpu_mem_usage:   # as PEFT: the new adapter's tensors wait on the meta device for a state dict
            _adapter_to_meta(self.model, adapter_name)

    def add_frozen_adapter(self, adapter_name: str, config: PeftConfig) -> None:
        """Inject a new adapter that starts frozen and inactive (as PEFT's add_weighted_adapter makes them); a
        failed injection leaves no config behind."""
        self.peft_config[adapter_name] = config
        try:
            self.inject_adapter(self.model, adapter_name)
        except Exception:
            self.peft_config.pop(adapter_name, None)
            raise
        self.set_requires_grad(adapter_name, False)

    def set_adapter(self, adapter_name: Union[str, list[str]], inference_mode: bool = False,
                    inhibit_same_adapter_change: bool = False) -> None:
        """Activate these adapters; they train (the others are frozen) unless inference_mode."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise AdapterNameError(f"adapter(s) {unknown} not found; adapters: {list(self.peft_config)}")
        if len(names) > 1:   # checked before anything changes; one adapter cannot clash with itself (and the
            check_one_copy_each(adapter_layers(self.model), names)   # walk is half of a 100-adapter set_adapter)
        self.active_adapter = names
        config = self.peft_config[names[0]].copy()
        config.inference_mode = inference_mode
        paths = [p for n in names if n in self.plans for p in self.plans[n].paths()]
        mark_trainable(self.model, config, names, paths)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter's layers' parts (layers left empty are unwrapped) and its shared state."""
        if adapter_name not in self.peft_config:
            raise AdapterNameError(f"Adapter {adapter_name} does not exist; adapters: {list(self.peft_config)}")
        layers = list(adapter_layers(self.model))
        if any(adapter_name in layer.merged_adapters for _, layer in layers):   # checked before any change
            raise AdapterNameError(f"Cannot delete adapter(s) [{adapter_name!r}] while they are merged. Please "
                                   f"unmerge them first. (model.unmerge_adapter(), then delete_adapter)")
        for fqn, layer in layers:
            if adapter_name in layer.adapter_names():
                layer.delete_adapter(adapter_name)
                if not layer.adapter_names():   # nothing left on it: the original module goes back in
                    unwrap(self.model, fqn, layer)
        self.delete_shared_state(adapter_name)
        del self.peft_config[adapter_name]
        self.plans.pop(adapter_name, None)
        remaining = [n for n in self._active if n != adapter_name]
        if len(remaining) != len(self._active):
            if remaining:
                self.set_adapter(remaining)
            elif self.peft_config:
                self.set_adapter(next(iter(self.peft_config)))
            else:
                self.active_adapter = []   # as PEFT: no adapter left, none active

    def set_requires_grad(self, adapter_names: Union[str, list[str]], requires_grad: bool = True) -> None:
        """Turn gradients on or off for these adapters' parameters in every layer (PEFT's API)."""
        names = {adapter_names} if isinstance(adapter_names, str) else set(adapter_names)
        unknown = sorted(names - set(self.peft_config))
        if unknown:
            raise AdapterNameError(f"set_requires_grad: {unknown} are not adapters; adapters: {list(self.peft_config)}")
        set_adapters_requires_grad(self.model, names, requires_grad)

    # -- shared per-adapter state ----------------------------------------------------------------------
    def add_shared_state(self, adapter_name: str, shared) -> dict[str, SharedBuffers]:
        """Keep a method's SharedState for `adapter_name` as buffers `<name>.<adapter>` of this tuner; returns
        {name: holder}. Layers keep these holders (unregistered: they are not the layers' state) and read
        `holder[adapter]` when they run, so a .to()/.half() of the model or a checkpoint load, which replace or
        fill the tuner's buffers, reaches every layer (PEFT's layers share its BufferDict the same way)."""
        holders = {}
        for key, tensor in shared.tensors.items():
            holder = self._modules.get(key)
            if holder is None:
                holder = self._modules[key] = SharedBuffers()
            holder.add(adapter_name, tensor, shared.persistent)
            holders[key] = holder
        return holders

    def delete_shared_state(self, adapter_name: str) -> None:
        for holder in self.shared_holders():
            holder.remove(adapter_name)

    def shared_holders(self):
        return [m for m in self._modules.values() if isinstance(m, SharedBuffers)]

    def shared_tensors(self, adapter_name: str, persistent_only: bool = True) -> dict[str, torch.Tensor]:
        """{name: tensor} of an adapter's shared state (the saved ones only, by default)."""
        return {key: holder[adapter_name] for key, holder in self._modules.items()
                if isinstance(holder, SharedBuffers) and adapter_name in holder
                and (holder.is_persistent(adapter_name) or not persistent_only)}

    # -- merge, unload, on and off ---------------------------------------------------------------------
    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False, adapter_names=None,
                         dequantize: bool = False):
        """PEFT's merge_and_unload; `dequantize=True` (ours) first turns quantized bases into full-precision
        layers, so the merged model equals the adapted one instead of being rounded back to 4 / 8 bits."""
        model = unload(self.model, merge=True, safe_merge=safe_merge, adapter_names=adapter_names,
                       progress=progressbar, dequantize=dequantize)
        return self._without_configs(model)

    def unload(self):
        return self._without_configs(unload(self.model, merge=False))

    def _without_configs(self, model: nn.Module) -> nn.Module:
        if model.__dict__.get("peft_config") is self.peft_config:
            del model.__dict__["peft_config"]
        return model

    def merge_adapter(self, adapter_names=None, safe_merge: bool = False) -> None:
        merge_adapters(self.model, adapter_names, safe_merge)

    def unmerge_adapter(self) -> None:
        unmerge_adapters(self.model)

    def enable_adapter_layers(self) -> None:
        flags_changed()   # layers put their flags back as they were: the next add sets every flag again
        for _, layer in adapter_layers(self.model):
            layer.enable_adapters(True)

    def disable_adapter_layers(self) -> None:
        flags_changed()
        for _, layer in adapter_layers(self.model):
            layer.enable_adapters(False)


def _adapter_to_meta(model: nn.Module, adapter_name: str) -> None:
    """Put one adapter's parameters on the meta device (shape and requires_grad kept); load_state_dict with
    assign=True, or a checkpoint load, gives them values."""
    for _, layer in adapter_layers(model):
        if getattr(layer, "_surgery_modules_to_save", False):
            continue
        for _, holder in layer.adapter_containers():
            if adapter_name not in holder:
                continue
            value = holder[adapter_name]
            if isinstance(value, nn.Parameter):
                holder[adapter_name] = nn.Parameter(value.to("meta"), requires_grad=value.requires_grad)
            elif isinstance(value, nn.Module):
                value.to("meta")


def _modules_named_by(state_dict: dict, prefix: str) -> str:
    """The module paths whose adapter entries a state dict holds ("<path>.<prefix>..." keys), as a regex that
    matches exactly those paths: PEFT adapts only them (a list would also match every path ending in one)."""
    if not prefix:
        raise PlanError("state_dict= targeting needs the method's parameter prefix; give target_modules instead")
    paths = []
    for key in state_dict:
        head, sep, _ = key.partition(f".{prefix}")
        if sep:
            paths.append(head.removeprefix("base_model.model."))
    if not paths:
        raise PlanError(f"state_dict: no key holds {prefix!r} entries, so it names no module to adapt")
    return "(?:" + "|".join(re.escape(p) for p in dict.fromkeys(paths)) + ")"
