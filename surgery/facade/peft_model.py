"""PeftModel: the thin façade PEFT users know, over the rule engine and its recorded plans.

    PeftModel
      ├── base_model: LoraModel (TunerModel)      keys read base_model.model.<path>, as in PEFT
      │     └── model: the rewritten transformer
      ├── peft_config: {adapter name: resolved config}
      └── plans: {adapter name: Plan}             what each adapter changed, printable as a table
"""
from __future__ import annotations

import contextlib
from typing import Optional, Union

from torch import nn

from ..api import apply_rules
from ..config.base import PeftConfig
from ..config.loading import load_config
from ..errors import AdapterNameError
from ..naming import validate_adapter_name
from ..plan.model import Plan, trainable_line
from ..plan.planner import add_heads
from ..rewrite.dtypes import upcast_adapter
from ..rewrite.trainable import adapter_layers, mark_trainable
from ..methods.lora.mixed import BASE_NAME
from .persistence import PersistenceMixin
from .prompt import PromptLearningMixin
from .training import TrainingMixin
from .tuner import LoraModel, TunerModel


class PeftModel(PersistenceMixin, PromptLearningMixin, TrainingMixin, nn.Module):
    """Base model encompassing various PEFT methods (PEFT's signature and attributes)."""

    # Task subclasses name the heads that train in full and are saved with the adapter.
    default_modules_to_save: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, peft_config: PeftConfig, adapter_name: str = "default",
                 autocast_adapter_dtype: bool = True, low_cpu_mem_usage: bool = False, **kwargs):
        super().__init__()
        self.peft_config: dict[str, PeftConfig] = {}
        self.plans: dict[str, Plan] = {}
        self._active_adapter = adapter_name
        # prompt learning changes no layers: its tuner is the plain holder (PEFT's base_model is the model itself)
        tuner = TunerModel if getattr(peft_config, "is_prompt_learning", False) else LoraModel
        self.base_model = tuner(model, self.peft_config)
        self.special_peft_forward_args = {"adapter_names"}
        self._add(adapter_name, peft_config, activate=True, strict=kwargs.pop("_strict_targets", True),
                  autocast_adapter_dtype=autocast_adapter_dtype)
        self._prepare_for_gradient_checkpointing(model)

    # -- adapters --------------------------------------------------------------------------------------
    def _task_config(self, peft_config: PeftConfig) -> PeftConfig:
        config = load_config(peft_config)  # a copy: the user's object is never mutated
        add_heads(config, self.default_modules_to_save)  # the class's heads, even without a task_type
        return config

    def _add(self, adapter_name: str, peft_config: PeftConfig, activate: bool, strict: bool = True,
             autocast_adapter_dtype: bool = True) -> Plan:
        validate_adapter_name(adapter_name)
        if adapter_name in self.peft_config:
            raise AdapterNameError(f"adapter {adapter_name!r} already exists; delete_adapter({adapter_name!r}) "
                                   f"first or choose another name")
        config = self._task_config(peft_config)
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(self.get_base_model(), "name_or_path", None) or None
        active = [adapter_name] if activate else self.active_adapters
        from ..methods.prompt.setup import add_prompt_adapter, check_mix

        check_mix(self.peft_config.values(), config)
        if config.is_prompt_learning:
            plan, resolved = add_prompt_adapter(self, adapter_name, config, active)
        else:
            plan = apply_rules(self.get_base_model(), config, adapter_name, active=active, strict_targets=strict)
            resolved = type(config).from_dict(plan.config)
            if autocast_adapter_dtype:
                upcast_adapter(self.get_base_model(), adapter_name)
        self.plans[adapter_name] = plan
        self.peft_config[adapter_name] = resolved
        if activate:
            self._active_adapter = adapter_name
        return plan

    def add_adapter(self, adapter_name: str, peft_config: PeftConfig, low_cpu_mem_usage: bool = False,
                    autocast_adapter_dtype: bool = True) -> None:
        """Add another adapter (not activated: call set_adapter)."""
        self._add(adapter_name, peft_config, activate=False, autocast_adapter_dtype=autocast_adapter_dtype)

    def set_adapter(self, adapter_name: str, inference_mode: bool = False) -> None:
        """Sets the active adapter. As in PEFT, it becomes trainable (the others frozen) unless inference_mode."""
        if adapter_name not in self.peft_config:
            raise AdapterNameError(f"adapter {adapter_name!r} not found; adapters: {list(self.peft_config)}")
        self._active_adapter = adapter_name
        config = self.peft_config[adapter_name].copy()
        config.inference_mode = inference_mode
        mark_trainable(self.get_base_model(), config, [adapter_name], self.plans[adapter_name].paths())

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise AdapterNameError(f"adapter {adapter_name!r} not found; adapters: {list(self.peft_config)}")
        for _, layer in adapter_layers(self.get_base_model()):
            if adapter_name in layer.adapter_names():
                layer.delete_adapter(adapter_name)
        if self.peft_config[adapter_name].is_prompt_learning:
            from ..methods.prompt.setup import remove_prompt_adapter

            remove_prompt_adapter(self, adapter_name)
        del self.peft_config[adapter_name]
        del self.plans[adapter_name]
        if self._active_adapter == adapter_name and self.peft_config:
            self.set_adapter(next(iter(self.peft_config)))

    @property
    def active_adapter(self) -> str:
        return self._active_adapter

    @property
    def active_adapters(self) -> list[str]:
        return [self._active_adapter]

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

    def forward(self, *args, adapter_names: Optional[list[str]] = None, **kwargs):
        """Forward pass; `adapter_names` (one per sample, "__base__" for none) mixes adapters in one batch."""
        if self._prompt_learning():
            return self._prompt_call("forward", args, kwargs, adapter_names)
        with self._per_sample_adapters(adapter_names):
            return self.get_base_model()(*args, **kwargs)

    def generate(self, *args, adapter_names: Optional[list[str]] = None, **kwargs):
        if self._prompt_learning():
            return self._prompt_call("generate", args, kwargs, adapter_names)
        with self._per_sample_adapters(adapter_names):
            return self.get_base_model().generate(*args, **kwargs)

    @contextlib.contextmanager
    def _per_sample_adapters(self, adapter_names: Optional[list[str]]):
        if adapter_names is None:
            yield
            return
        unknown = sorted(set(adapter_names) - set(self.peft_config) - {BASE_NAME})
        if unknown:
            raise AdapterNameError(f"adapter_names: {unknown} are not adapters of this model; adapters: "
                                   f"{list(self.peft_config)} (or {BASE_NAME!r} for the base model)")
        layers = [layer for _, layer in adapter_layers(self.get_base_model())]
        names = tuple(adapter_names)
        for layer in layers:
            layer._batch_adapters = names
        try:
            yield
        finally:
            for layer in layers:
                layer._batch_adapters = None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # -- counting --------------------------------------------------------------------------------------
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = total = 0
        for p in self.parameters():
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
        return trainable, total

    def print_trainable_parameters(self) -> None:
        print(trainable_line(*self.get_nb_trainable_parameters()))

    # -- adapters on and off ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def disable_adapter(self):
        """Inside the block the base model runs alone (bit-identical outputs)."""
        was_disabled, self._adapters_disabled = self._adapters_disabled, True
        self.base_model.disable_adapter_layers()
        try:
            yield
        finally:
            self.base_model.enable_adapter_layers()
            self._adapters_disabled = was_disabled

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: Optional[list[str]] = None) -> nn.Module:
        self._refuse_merge("merge_and_unload")
        return self.base_model.merge_and_unload(progressbar, safe_merge, adapter_names)

    def unload(self) -> nn.Module:
        self._remove_prompt_state()
        return self.base_model.unload()

    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        self._refuse_merge("merge_adapter")
        self.base_model.merge_adapter(adapter_names, safe_merge)

    def unmerge_adapter(self) -> None:
        self.base_model.unmerge_adapter()


ModelUnion = Union[PeftModel, nn.Module]
