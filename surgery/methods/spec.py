"""MethodSpec: everything the method-blind pipeline needs to know about one PEFT method, as data and hooks.

The planner, the rewriter, the checkpoint code and the façade never name a method; they ask its spec:

  config_cls      the config class (PEFT's name and fields)
  tuner_cls       PeftModel.base_model's class, PEFT's name for it (LoraModel, IA3Model, ...)
  handlers        base module type -> adapter layer class, tried in order (a quantized base type is one more row)
  rewrite_params  per matched module, the parameters its adapter gets (rank, alpha, ...): a dict on the Rewrite,
                  passed as keywords to the layer's update_layer(adapter_name, config, **params)
  added_params    how many parameters one rewrite adds (the plan's figures, PEFT's print_trainable_parameters)
  columns/flags   what the audit table shows for it
  collapsed_keys  containers whose checkpoint key drops the module's `.weight` leaf (DoRA's magnitude)
  shared_state    per-adapter tensors every layer of the adapter shares (VeRA's projections), built once before
                  any layer and kept on the tuner, where PEFT keeps them (checkpoint key base_model.<name>); it
                  sees the tuner, so a new adapter can be checked against (and reuse) the other adapters' state
  planner         methods that inject state instead of wrapping modules plan themselves (prompt learning)
  injector        ...and keep that state in one object on the PeftModel (see InjectedState)
  initial_model_conversion   what save_pretrained saves with path_initial_model_for_weight_conversion
  parameter_handler  the layer that adapts one nn.Parameter of a module (config.target_parameters), if any
  restructure     a change to the model's structure a config asks for before any layer (Restructure)
  auxiliary       modules a config wraps besides the method's layers, for extra training (Auxiliary)
  tied_modules    modules a config ties to a module it adapts: they share its adapter (or trained copy)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional, Union

from torch import nn

from ..config.enums import PeftType
from ..errors import PlanError
from ..quantized import backend_of


@dataclass(frozen=True)
class Handler:
    """One row of a method's handler table: which base modules `layer` wraps."""

    accepts: Callable[[nn.Module], bool]
    layer: type
    label: str                                             # for error messages: "torch.nn.Linear"
    # (base, config, fqn) -> None, or why this configuration cannot wrap that module (the PlanError text)
    refuses: Optional[Callable[[nn.Module, Any, str], Optional[str]]] = None
    # the quantized base type this row wraps (surgery/quantized); quantized bases match only such rows, so a
    # method without one refuses them (bitsandbytes' layers subclass nn.Linear: a plain row would take them)
    backend: Any = None


@dataclass(frozen=True)
class ParameterHandler:
    """How a method adapts one nn.Parameter of a module (config.target_parameters) instead of the module.

    The layer is built as `layer(module, parameter_name=name)`; several targeted parameters of one module give
    stacked layers, each wrapping the one before (the first parameter innermost), and a layer class marks itself
    with `_surgery_parameter_layer = True` so the pipeline can find the one adapting a given parameter."""

    layer: type
    label: str                                                        # for messages: "2-D / 3-D nn.Parameter"
    # (module, parameter name, config, "module.param") -> None, or why it cannot be adapted (the PlanError text)
    refuses: Callable[[nn.Module, str, Any, str], Optional[str]]
    rewrite_params: Callable[["RewriteSite"], dict]                  # like MethodSpec.rewrite_params
    added_params: Callable[[Any, dict, Any], int]                    # (parameter tensor, params, config) -> count


@dataclass
class RewriteSite:
    """What rewrite_params sees of one matched module (or, with `parameter`, of one targeted parameter of it)."""

    fqn: str
    base: nn.Module          # the module to adapt (the base layer when it is wrapped already)
    config: Any              # the planner's own copy of the config (set only what PEFT sets while wrapping)
    notes: list              # append plan warnings here (shown once per distinct text)
    # when loading a checkpoint: the shapes it holds under this module ({"lora_A.weight": (r, in), ...}), so a
    # method whose saved shapes can differ from what its config implies plans what the checkpoint holds
    saved: dict = field(default_factory=dict)
    parameter: str = ""      # a parameter target: the parameter's name on `base` (config.target_parameters)

    @property
    def key(self) -> str:
        """The name patterns (rank_pattern, ...) are matched against: the module path, or "<path>.<parameter>"."""
        return f"{self.fqn}.{self.parameter}" if self.parameter and self.fqn else self.parameter or self.fqn

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)


class SharedState(NamedTuple):
    """Tensors shared by every layer of one adapter, by name ({"vera_A": tensor, ...})."""

    tensors: dict
    persistent: bool = True   # saved with the adapter (checkpoint key base_model.<name>)


@dataclass(frozen=True)
class Restructure:
    """A change to the base model's structure that a config asks for before any adapter layer is built (PEFT's
    _prepare_model: LoRA's layer_replication). Planned first, applied with the plan:

      plan(model, config) -> dict or None      the change as JSON-ready data, checked against the model (None:
                                               nothing to change); raises ConfigError / PlanError
      view(model, change) -> nn.Module         the model as it will be, sharing the model's modules and parameters
                                               where they stay; `model` itself is left unchanged
      install(model, view, change) -> None     give `model` the view's structure (after every check passed)
      describe(change) -> str                  one line for the audit table
    """

    plan: Callable
    view: Callable
    install: Callable
    describe: Callable


@dataclass
class AuxiliarySite:
    """What Auxiliary.plan sees: the model (as the plan will leave it), its graph, the resolved config, and the
    paths the plan already rewrites (targets) or copies (saved: modules_to_save)."""

    model: nn.Module
    graph: Any
    config: Any
    adapter_name: str
    targets: list
    saved: list
    notes: list


@dataclass(frozen=True)
class Auxiliary:
    """Modules a config wraps besides the method's layers, to train part of them (PEFT's AuxiliaryTrainingWrapper
    other than modules_to_save, e.g. LoRA's trainable_token_indices).

      plan(site) -> [AuxiliaryWrap]   what to wrap and with which parameters (plan/model.py), checked
      wrappers                        the wrapper classes those wraps name; each is an adapter layer built as
                                      cls(module), given the adapter by update_layer(name, config, **params)
                                      (a `tied_to` param names the wrap whose state it shares: the rewriter
                                      passes that wrapper instead)
    """

    plan: Callable
    wrappers: tuple = ()

    def wrapper_class(self, name: str) -> type:
        for cls in self.wrappers:
            if qualified_name(cls) == name:
                return cls
        raise PlanError(f"the plan names wrapper class {name!r}, which this method does not have")


def _no_params(site: RewriteSite) -> dict:
    return {}


@dataclass(frozen=True)
class MethodSpec:
    peft_type: PeftType
    config_cls: type
    tuner_cls: Optional[type] = None
    name: str = ""                              # how messages name the method ("LoRA"); default: peft_type
    handlers: tuple[Handler, ...] = ()
    rewrite_params: Callable[[RewriteSite], dict] = _no_params
    added_params: Optional[Callable[[nn.Module, dict, Any], int]] = None
    columns: tuple[tuple[str, str], ...] = ()   # audit table: (header, params key)
    flags: tuple[tuple[str, str], ...] = ()     # shown after the method name when params[key] is true
    # target_modules when the config gives none: {transformers model_type: names}, or (model) -> target_modules
    default_targets: Union[dict, Callable] = field(default_factory=dict)
    resolve_config: Optional[Callable] = None   # (config, model) -> None: fill fields PEFT derives from the model
    prepare_config: Optional[Callable] = None   # (config, model) -> plan notes: rewrite targets before the defaults
    mergeable: bool = True
    merge_refusal: str = ""                     # why, when not mergeable
    mixed_batch: bool = False                   # adapter_names= (one adapter per sample) supported
    frozen_on_load: str = ""                    # why a saved adapter cannot be loaded trainable (empty: it can)
    upcasts_adapters: bool = True               # float32 adapters on half-precision bases (autocast_adapter_dtype);
                                                # False where the adapter is a copy of base modules (keeps their dtype)
    # save_embedding_layers="auto" saves embeddings that are targets; or (config) -> bool, per adapter
    saves_targeted_embeddings: Union[bool, Callable] = True
    collapsed_keys: tuple[str, ...] = ()
    # (model, plan, config, tuner) -> SharedState; tuner: the TunerModel (its peft_config and shared_tensors
    # are the other adapters'). Layers get `shared=` {name: holder}: index holder[adapter_name] when run
    shared_state: Optional[Callable] = None
    planner: Optional[Callable] = None          # (model, config, adapter_name, saved) -> Plan
    injector: Optional[type] = None             # an InjectedState subclass
    follows_ties: bool = False                  # modules tied to a target are rewritten with it (no split warning)
    # {name: fn(model, ...)}: PEFT calls on every PeftModel / tuner that this method owns (methods/registry.py)
    model_api: dict = field(default_factory=dict)
    # `surgery inspect`: the rank of one module's adapter from its checkpoint tensors ({container: tensor})
    checkpoint_rank: Optional[Callable[[dict], int]] = None
    # save_pretrained(path_initial_model_for_weight_conversion=P), for methods whose init rewrites the base weights:
    # (peft_model, adapter_name, tensors, P, state_dict) -> (config, tensors) to save instead, an adapter for the
    # original base; None: the method refuses the keyword
    initial_model_conversion: Optional[Callable] = None
    parameter_handler: Optional[ParameterHandler] = None   # config.target_parameters (None: the method has none)
    restructure: Optional[Restructure] = None
    auxiliary: Optional[Auxiliary] = None
    # (model, graph, config) -> {follower path: leader path}: modules the config ties to a module it adapts
    # (LoRA's ensure_weight_tying). A follower of a target is rewritten after it, given its layer (TIED_TO); a
    # follower of a modules_to_save module gets a copy sharing the leader's copy's parameters
    tied_modules: Optional[Callable] = None

    # -- what the core asks ----------------------------------------------------------------------------
    @property
    def label(self) -> str:
        return self.name or self.peft_type.value

    def handler_for(self, base: nn.Module, config, fqn: str) -> Handler:
        """The handler that wraps `base`, or a PlanError naming the module and what the method supports."""
        backend = backend_of(base)
        for handler in self.handlers:
            if handler.backend is backend and handler.accepts(base):
                reason = handler.refuses(base, config, fqn) if handler.refuses is not None else None
                if isinstance(reason, Exception):   # a refusal with its own error class
                    raise reason
                if reason:
                    raise PlanError(reason)
                return handler
        if backend is not None:
            rows = [h.label for h in self.handlers if h.backend is not None]
            raise PlanError(f"target module {fqn!r} is a quantized {backend.label} ({backend.name}), which "
                            f"{self.label} cannot wrap: " + (f"its quantized layers are {', '.join(rows)}. " if rows
                                                             else "it has no adapter layer for quantized bases. ")
                            + "Exclude the module (exclude_modules), use a method that wraps quantized layers "
                              "(docs/quantization.md), or load the base without quantization")
        supported = ", ".join(dict.fromkeys(h.label for h in self.handlers if h.backend is None)) or "none"
        raise PlanError(f"target module {fqn!r} is a {type(base).__name__}, which {self.label} cannot "
                        f"wrap; supported: {supported}. Narrow target_modules (or exclude_modules) to those layers.")

    def layer_class(self, name: str) -> type:
        """The layer class a plan names (only among this method's own handlers: a plan is data)."""
        for handler in self.handlers + ((self.parameter_handler,) if self.parameter_handler else ()):
            if qualified_name(handler.layer) == name:
                return handler.layer
        raise PlanError(f"the plan names layer class {name!r}, which {self.label} does not have")

    def count(self, base: nn.Module, params: dict, config) -> int:
        return self.added_params(base, params, config) if self.added_params is not None else 0


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
