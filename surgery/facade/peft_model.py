"""PeftModel: the thin façade PEFT users know, over the rule engine and its recorded plans.

    PeftModel
      ├── base_model: the method's tuner (PEFT's <Method>Model)   keys read base_model.model.<path>, as PEFT
      │     └── model: the rewritten transformer
      ├── peft_config: {adapter name: resolved config}
      ├── plans: {adapter name: Plan}             what each adapter changed, printable as a table
      └── <injected state>                        methods that add inputs instead of layers:
                                                  one InjectedState, under PEFT's attribute name

Every adapter takes one flow: plan -> stage (injected state, nothing changes) -> apply -> attach. The façade
names no method: what differs between methods is in their specs.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from typing import Optional, Union

import torch
from torch import nn
from transformers.utils import PushToHubMixin

from ..config.base import PeftConfig
from ..errors import AdapterNameError, ConfigError, ConfigTypeError, MethodAttributeError, PeftWarning
from ..quantized import stored_numel
from ..methods.registry import exposed_by, get_method, model_api
from ..naming import BASE_NAME, GenerationNames, validate_adapter_name
from ..plan.model import Plan, trainable_line
from ..rewrite.trainable import adapter_layers
from .injected import InjectedState
from .persistence import PersistenceMixin
from .signature import with_base_signature
from . import trainer_guard
from .status import get_layer_status, get_model_status
from .training import TrainingMixin


class PeftModel(PersistenceMixin, TrainingMixin, PushToHubMixin, nn.Module):
    """Base model encompassing various PEFT methods (PEFT's signature and attributes)."""

    # Task subclasses name the heads that train in full and are saved with the adapter.
    default_modules_to_save: tuple[str, ...] = ()
    # task_type -> task class (facade/tasks.py fills it), for PeftModel.from_pretrained
    task_classes: dict = {}
    # True inside `with model.disable_adapter():` (injected state is then left out too)
    _adapters_disabled = False
    # transformers' flag for "trainable adapters are attached" (peft's own models pass its isinstance check
    # instead): without it the Trainer refuses a quantized base as "purely quantized" (QLoRA)
    _hf_peft_config_loaded = True

    def __init__(self, model: nn.Module, peft_config: PeftConfig, adapter_name: str = "default",
                 autocast_adapter_dtype: bool = True, low_cpu_mem_usage: bool = False, **kwargs):
        super().__init__()
        self.peft_config: dict[str, PeftConfig] = {}
        self.base_model = get_method(peft_config.peft_type).tuner_cls(model, self.peft_config, adapter_name)
        self.special_peft_forward_args = {"adapter_names"}
        self._add(adapter_name, peft_config, activate=True, strict=kwargs.pop("_strict_targets", True),
                  autocast_adapter_dtype=autocast_adapter_dtype, checkpoint_shapes=kwargs.pop("_checkpoint_shapes", None))
        self._prepare_for_gradient_checkpointing(model)
        # per instance: the base model's parameter names (the Trainer keeps the dataset columns it lists)
        self.forward = with_base_signature(self)

    @property
    def plans(self) -> dict[str, Plan]:
        """{adapter name: the Plan it applied} (kept by the tuner)."""
        return self.base_model.plans

    @property
    def _active_adapter(self) -> Optional[str]:
        active = self.base_model.active_adapters
        return active[0] if active else None

    # -- adapters --------------------------------------------------------------------------------------
    def _add(self, adapter_name: str, peft_config: PeftConfig, activate: bool, strict: bool = True,
             autocast_adapter_dtype: bool = True, checkpoint_shapes: Optional[dict] = None) -> Plan:
        validate_adapter_name(adapter_name)
        if adapter_name in self.peft_config:
            raise AdapterNameError(f"adapter {adapter_name!r} already exists; delete_adapter({adapter_name!r}) "
                                   f"first or choose another name")
        self._check_new_adapter(peft_config)
        spec = get_method(peft_config.peft_type)
        plan, config = self.base_model.plan_adapter(adapter_name, peft_config, strict=strict,
                                                    heads=self.default_modules_to_save,
                                                    checkpoint_shapes=checkpoint_shapes)
        model = self.get_base_model()
        state = self._injected_state(spec, create=True) if spec.injector is not None else None
        staged = state.stage(model, plan, config) if state is not None else None   # may fail: nothing changed
        active = [adapter_name] if activate else self.active_adapters
        self.base_model.apply_adapter(plan, config, active, autocast_adapter_dtype=autocast_adapter_dtype)
        if state is not None:
            state.attach(adapter_name, staged)
        if activate:
            self.base_model.active_adapter = adapter_name
        return plan

    def _check_new_adapter(self, config: PeftConfig) -> None:
        """As PEFT: one PeftModel holds adapters of one method (combining methods is PEFT's PeftMixedModel), and
        at most one of them trains biases (biases live in the base model, shared by every adapter)."""
        for other in self.peft_config.values():
            if other.peft_type != config.peft_type:
                raise ConfigError(f"cannot combine a {config.peft_type.value} adapter with the model's "
                                  f"{other.peft_type.value} adapter(s) in one PeftModel; use a separate PeftModel")
        if (getattr(config, "bias", "none") or "none") == "none":   # nothing to clash with: skip reading every config
            return
        biased = [name for name, c in self.peft_config.items() if (getattr(c, "bias", "none") or "none") != "none"]
        if biased:
            first = self.peft_config[biased[0]].bias
            raise ConfigError(f"bias = {config.bias!r}: adapter {biased[0]!r} already trains biases ({first!r}); "
                              f"as in PEFT, only one adapter of a model may (biases are the base model's, shared "
                              f"by every adapter): set bias='none' for the others")

    def _injected_state(self, spec, create: bool = False) -> Optional[InjectedState]:
        """The InjectedState of `spec`'s method on this model (created on first use when `create`)."""
        attribute = spec.injector.attribute
        state = self._modules.get(attribute)
        if state is None and create:
            state = spec.injector()
            state.__dict__["host"] = self
            self._modules[attribute] = state
        return state

    def _injected_states(self) -> list[InjectedState]:
        return [m for m in self._modules.values() if isinstance(m, InjectedState)]

    def _running_state(self) -> Optional[InjectedState]:
        """The injected state calls go through now: the active adapter's, unless adapters are disabled."""
        if self._adapters_disabled or not self.peft_config:
            return None
        return next((s for s in self._injected_states() if s.runs(self._active_adapter)), None)

    def add_adapter(self, adapter_name: str, peft_config: PeftConfig, low_cpu_mem_usage: bool = False,
                    autocast_adapter_dtype: bool = True) -> None:
        """Add another adapter (not activated: call set_adapter)."""
        self._add(adapter_name, peft_config, activate=False, autocast_adapter_dtype=autocast_adapter_dtype)

    def set_adapter(self, adapter_name: str, inference_mode: bool = False) -> None:
        """Sets the active adapter. As in PEFT, it becomes trainable (the others frozen) unless inference_mode."""
        if adapter_name not in self.peft_config:
            raise AdapterNameError(f"adapter {adapter_name!r} not found; adapters: {list(self.peft_config)}")
        self.base_model.set_adapter(adapter_name, inference_mode=inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise AdapterNameError(f"Adapter {adapter_name} does not exist; adapters: {list(self.peft_config)}")
        self.base_model.delete_adapter(adapter_name)   # refuses a merged adapter before anything changes
        for state in self._injected_states():
            state.detach(adapter_name)

    @property
    def active_adapter(self) -> str:
        return self._active_adapter

    @property
    def active_adapters(self) -> list[str]:
        return self.base_model.active_adapters

    @property
    def has_active_enabled_adapter(self) -> bool:
        """Whether an adapter runs: adapters not switched off with disable_adapter() (PEFT's property)."""
        return not self._adapters_disabled or not self.active_adapters

    @property
    def active_peft_config(self) -> PeftConfig:
        return self.peft_config[self._active_adapter]

    @property
    def modules_to_save(self) -> Optional[set]:
        names = set()
        for config in self.peft_config.values():
            names |= set(getattr(config, "modules_to_save", None) or [])
        return names or None

    def plan(self, adapter_name: Optional[str] = None) -> Plan:
        """The Plan an adapter applied (what it rewrote, ranks, parameters)."""
        return self.plans[adapter_name or self._active_adapter]

    def audit(self, fmt: str = "table") -> str:
        """One table per adapter, with its active and merged state."""
        out = []
        merged = {n for _, layer in adapter_layers(self.get_base_model()) for n in layer.merged_adapters}
        for name, plan in self.plans.items():
            state = ("active" if name == self._active_adapter else "inactive") + (", merged" if name in merged else "")
            out.append(f"[{name}: {state}]\n" + plan.table(fmt))
        return "\n\n".join(out)

    # -- the base model --------------------------------------------------------------------------------
    def get_base_model(self) -> nn.Module:
        return self.base_model.model

    @property
    def accepts_loss_kwargs(self) -> bool:
        """The base model's; refused to transformers' Trainer outside surgery's trainers (it would save surgery
        models as full models: see facade/trainer_guard.py)."""
        return trainer_guard.accepts_loss_kwargs(self, sys._getframe(1))

    def forward(self, *args, adapter_names: Optional[list[str]] = None, **kwargs):
        """Forward pass; `adapter_names` (one per sample, "__base__" for none) mixes adapters in one batch."""
        state = self._running_state()
        if state is not None:
            self._refuse_per_sample(adapter_names)
            return state.forward_call(args, kwargs)
        with self._per_sample_adapters(adapter_names, args, kwargs):
            return self.get_base_model()(*args, **kwargs)

    def generate(self, *args, adapter_names: Optional[list[str]] = None, **kwargs):
        state = self._running_state()
        if state is not None:
            self._refuse_per_sample(adapter_names)
            return state.generate_call(args, kwargs)
        names = GenerationNames(adapter_names) if adapter_names is not None else None   # beams repeat samples
        with self._per_sample_adapters(names, args, kwargs):
            return self.get_base_model().generate(*args, **kwargs)

    def _refuse_per_sample(self, adapter_names) -> None:
        if adapter_names is not None:
            method = self.active_peft_config.peft_type.value
            raise ConfigError(f"adapter_names (one adapter per sample) is not supported with {method}")

    @contextlib.contextmanager
    def _per_sample_adapters(self, adapter_names: Optional[list[str]], args=(), kwargs=None):
        if adapter_names is None:
            yield
            return
        spec = get_method(self.active_peft_config.peft_type)
        if not spec.mixed_batch:
            self._refuse_per_sample(adapter_names)
        unknown = sorted(set(adapter_names) - set(self.peft_config) - {BASE_NAME})
        if unknown:
            raise AdapterNameError(f"Trying to infer with non-existing adapter(s): {', '.join(unknown)}. adapters: "
                                   f"{list(self.peft_config)} (or {BASE_NAME!r} for the base model)")
        if self.training:   # PEFT's rule: one adapter per sample is for inference
            raise ConfigError("Cannot pass `adapter_names` when the model is in training mode: call model.eval() "
                              "first (one adapter per sample is an inference feature)")
        layers = [layer for _, layer in adapter_layers(self.get_base_model())]
        if any(layer.merged_adapters for layer in layers):
            raise ConfigError("Cannot pass `adapter_names` when there are merged adapters, please call "
                              "`unmerge_adapter` first.")
        rows = _batch_rows(args, kwargs or {})
        if rows is not None and rows != len(adapter_names):
            raise ConfigError(f"Length of `adapter_names` should be the same as the number of inputs, but got "
                              f"{len(adapter_names)} and {rows} respectively.")
        names = adapter_names if isinstance(adapter_names, GenerationNames) else tuple(adapter_names)
        for layer in layers:
            layer._batch_adapters = names
        try:
            yield
        finally:
            for layer in layers:
                layer._batch_adapters = None

    def __getattr__(self, name: str):
        if "_modules" not in self.__dict__:   # before nn.Module.__init__ (DeepSpeed's init wrapper asks hasattr)
            raise AttributeError(name)
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            if name == "prefix" and self._injected_states():
                # PEFT: a prompt-learning model has no parameter prefix (its adapters are not layers), and code
                # tells the two kinds apart with hasattr(model, "prefix")
                raise AttributeError(f"{type(self).__name__} with injected state has no prefix") from None
            for state in self._injected_states():   # PEFT's names for injected state
                if name in state.exposed:
                    return getattr(state, name)
            try:
                return getattr(self.base_model, name)
            except AttributeError:
                api = model_api().get(name)   # PEFT's model-wide calls that a method owns
                if api is not None:
                    return functools.partial(api, self)
                owners = exposed_by(name)
                if not owners:
                    raise
                methods = ", ".join(p.value for p in owners)
                kinds = ", ".join(sorted({c.peft_type.value for c in self.peft_config.values()})) or "none"
                raise MethodAttributeError(f"{name} is only for {methods} adapters; this model's adapters are "
                                           f"{kinds}") from None

    def set_requires_grad(self, adapter_names: Union[str, list[str]], requires_grad: bool = True) -> None:
        """Turn gradients on or off for these adapters (PEFT's API; not for methods that add inputs)."""
        if self._injected_states():
            raise ConfigTypeError(f"Setting `requires_grad` is not supported for prompt learning methods like "
                                  f"{self.active_peft_config.peft_type.value}. Their parameters live in the "
                                  f"injected state: set requires_grad on those")
        self.base_model.set_requires_grad(adapter_names, requires_grad)

    def get_layer_status(self):
        """One TunerLayerStatus per adapter layer (PEFT's API; see facade/status.py)."""
        return get_layer_status(self)

    def get_model_status(self):
        """The model-wide TunerModelStatus, "irregular" where layers disagree (PEFT's API)."""
        return get_model_status(self)

    # -- counting --------------------------------------------------------------------------------------
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = total = 0
        for p in self.parameters():
            count = stored_numel(p)   # a 4-bit weight counts its unpacked values, as PEFT
            total += count
            trainable += count if p.requires_grad else 0
        return trainable, total

    def print_trainable_parameters(self) -> None:
        print(trainable_line(*self.get_nb_trainable_parameters()))

    # -- adapters on and off ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def disable_adapter(self):
        """Inside the block the base model runs alone (bit-identical outputs)."""
        was_disabled, self._adapters_disabled = self._adapters_disabled, True
        states = {layer._disable_adapters for _, layer in adapter_layers(self.get_base_model())}
        if len(states) > 1:   # as PEFT: a mixed state is most likely a mistake, and the block ends it
            warnings.warn("The model contains some adapter layers that are enabled and others that are disabled. "
                          "This is most likely unintentional. After exiting the disable_adapter context, all "
                          "adapters will be enabled", PeftWarning, stacklevel=3)
        all_disabled = states == {True}
        self.base_model.disable_adapter_layers()
        try:
            yield
        finally:
            if not all_disabled:   # every layer off before the block stays off (as PEFT)
                self.base_model.enable_adapter_layers()
            self._adapters_disabled = was_disabled

    def _refuse_merge(self, what: str) -> None:
        for config in self.peft_config.values():
            spec = get_method(config.peft_type)
            if not spec.mergeable:
                raise ConfigError(f"{what}: {config.peft_type.value} cannot be merged: {spec.merge_refusal}")

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: Optional[list[str]] = None, dequantize: bool = False) -> nn.Module:
        """Merge the adapters into the base weights and return the base model. `dequantize=True` (not in PEFT):
        a quantized base is first made full precision, so the merge rounds nothing (see rewrite/merge.py)."""
        self._refuse_merge("merge_and_unload")
        return self.base_model.merge_and_unload(progressbar, safe_merge, adapter_names, dequantize=dequantize)

    def unload(self) -> nn.Module:
        for state in self._injected_states():
            for name in list(state.keys()):
                state.detach(name)
        return self.base_model.unload()

    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        self._refuse_merge("merge_adapter")
        self.base_model.merge_adapter(adapter_names, safe_merge)

    def unmerge_adapter(self) -> None:
        self.base_model.unmerge_adapter()


def _batch_rows(args, kwargs) -> Optional[int]:
    """The batch size of a forward call: its first tensor input (input_ids, inputs_embeds, or positional)."""
    for value in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), kwargs.get("x"), *args):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    return None


ModelUnion = Union[PeftModel, nn.Module]
