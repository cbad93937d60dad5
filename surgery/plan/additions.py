"""What a config adds to a plan besides its method's rewrites, asked of the method's spec (method-blind):

  restructure    a structural change made before any layer (spec.restructure): the plan is made on a *view* of
                 the model as it will be (its modules shared, the model itself untouched) and records the change
  config ties    modules the config ties to a module it adapts (spec.tied_modules): a follower of a rewritten
                 module is rewritten after it with its layer (params[TIED_TO]); a follower of a modules_to_save
                 module gets a copy sharing the leader's copy's parameters (SavedModule.tied_to, no parameters)
  auxiliaries    modules wrapped besides the method's layers, to train part of them (spec.auxiliary)

Everything here is checked and recorded; nothing changes until the rewriter applies the plan.
"""
from __future__ import annotations

from torch import nn

from ..errors import PlanError
from ..methods.spec import AuxiliarySite
from .model import SavedModule


def restructured(spec, model: nn.Module, config) -> tuple[nn.Module, list]:
    """(the model to plan on, [the structural change]): the view of the changed model, or the model itself."""
    if spec.restructure is None:
        return model, []
    change = spec.restructure.plan(model, config)
    if change is None:
        return model, []
    change = {**change, "description": spec.restructure.describe(change)}   # for the audit table (plan is data)
    return spec.restructure.view(model, change), [change]


def config_ties(spec, model: nn.Module, graph, config, matches: list[str], saved: list[SavedModule]):
    """({follower: leader} among rewrites, {follower: leader} among modules_to_save copies) the config asks for."""
    if spec.tied_modules is None:
        return {}, {}
    targets, copies = set(matches), {m.path for m in saved}
    tied_targets, tied_copies = {}, {}
    for follower, leader in spec.tied_modules(model, graph, config).items():
        if follower == leader:
            continue
        if follower not in graph.nodes:
            raise PlanError(f"{follower!r} is tied to {leader!r} but is not a module of the model")
        if leader in targets:
            tied_targets[follower] = leader
        elif leader in copies:
            tied_copies[follower] = leader
        else:
            raise PlanError(f"{follower!r} is tied to {leader!r}, which this adapter neither adapts (target_modules) "
                            f"nor trains in full (modules_to_save): the tie has nothing to share; add {leader!r} "
                            f"to one of them")
    return tied_targets, tied_copies


def with_tied_copies(graph, saved: list[SavedModule], tied: dict[str, str]) -> list[SavedModule]:
    """modules_to_save entries with the tied followers sharing their leader's copy (counted once: no params)."""
    kept = [m for m in saved if m.path not in tied]
    return kept + [SavedModule(path, graph.nodes[path]["type"], 0, tied_to=leader) for path, leader in tied.items()]


def auxiliary_wraps(spec, model: nn.Module, graph, config, adapter_name: str, rewrites, saved, notes) -> list:
    """The method's auxiliary wraps for this config (plan/model.py AuxiliaryWrap), checked."""
    if spec.auxiliary is None:
        return []
    site = AuxiliarySite(model, graph, config, adapter_name, [rw.path for rw in rewrites],
                         [m.path for m in saved], notes)
    return list(spec.auxiliary.plan(site))
