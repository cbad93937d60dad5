"""Mixture-of-experts targets that are likely mistakes: the router, and shared experts instead of routed ones.

An MoE block is a module with a child named `experts` (the routed experts: a list of expert MLPs, or one
module holding them as fused 3-D parameters, experts x out x in). Beside them sit

    <block>.gate, <block>.router          the router: scores the experts, picks each token's top-k
    <block>.shared_expert(s)..., ..._gate experts (and their gate) every token goes through

Two traps (vllm#47088 is the first): names written for dense MLPs ("gate_proj", "down_proj") reach only the
shared experts' Linear layers when the routed experts are fused parameters, so the routed experts silently stay
frozen; and a name like "gate" or "router" adapts the router, which changes where tokens are sent (and serving
stacks may not load an adapter there). The plan warns for both, naming what was hit and what reaches the routed
experts. Method-blind: any method adapting these modules meets the same traps.
"""
from __future__ import annotations

from typing import Optional

from ..graph.walk import is_adapter_layer

ROUTER_NAMES = ("gate", "router")
SHARED_PREFIX = "shared_expert"
EXPERTS = "experts"


def _blocks(graph) -> dict[str, str]:
    """{MoE block path: its routed experts' path}."""
    return {fqn.rpartition(".")[0]: fqn for fqn in graph.nodes if fqn and fqn.rpartition(".")[2] == EXPERTS}


def _block_of(path: str, blocks: dict) -> Optional[str]:
    """The innermost MoE block `path` lies in (None: not in one)."""
    owners = [b for b in blocks if b == "" or path.startswith(b + ".")]
    return max(owners, key=len) if owners else None


def _kind(path: str, block: str) -> str:
    first = (path[len(block) + 1:] if block else path).split(".")[0]
    if first in ROUTER_NAMES:
        return "router"
    if first.startswith(SHARED_PREFIX):
        return "shared"
    return "routed" if first == EXPERTS else "other"


def _routed(graph, experts_path: str) -> tuple[str, list[str]]:
    """(the routed experts in words, the target_parameters names that reach them: [] for per-expert modules)."""
    module = graph.nodes[experts_path]["module"]
    base = module.get_base_layer() if is_adapter_layer(module) else module
    fused = [(n, tuple(p.shape)) for n, p in base._parameters.items() if p is not None and p.dim() == 3]
    if not fused:
        return f"the per-expert modules under {experts_path}", []
    block_leaf = experts_path.rpartition(".")[0].rpartition(".")[2]
    prefix = f"{block_leaf}.{EXPERTS}" if block_leaf else EXPERTS
    shapes = ", ".join(f"{n} ({'x'.join(map(str, s))})" for n, s in fused)
    return f"fused 3-D parameters of {experts_path}: {shapes}", [f"{prefix}.{n}" for n, _ in fused]


def _examples(paths: list[str]) -> str:
    return ", ".join(paths[:2]) + (f" and {len(paths) - 2} more" if len(paths) > 2 else "")


def routing_notes(graph, module_paths: list[str], parameter_paths: list[tuple[str, str]]) -> list[str]:
    """Plan warnings for targets on routers or shared experts. parameter_paths: (module path, "module.param")."""
    blocks = _blocks(graph)
    if not blocks:
        return []
    hits: dict[tuple[str, str], list[str]] = {}   # (kind, field) -> targets
    routed_blocks = set()
    shown: dict[tuple[str, str], str] = {}          # (kind, field) -> one block, for what reaches its experts
    shared_blocks: dict[str, list[str]] = {}
    targets = [(p, p, "target_modules") for p in module_paths] + [(p, k, "target_parameters")
                                                                   for p, k in parameter_paths]
    for path, label, field in targets:
        block = _block_of(path, blocks)
        if block is None:
            continue
        kind = _kind(path, block)
        if kind == "routed":
            routed_blocks.add(block)
        elif kind in ("router", "shared"):
            hits.setdefault((kind, field), []).append(label)
            shown.setdefault((kind, field), block)
            if kind == "shared":
                shared_blocks.setdefault(field, []).append(block)
    notes = []
    for (kind, field), labels in hits.items():
        block = shown[(kind, field)]
        routed, names = _routed(graph, blocks[block])
        if kind == "router":
            leaf = labels[0].removeprefix(block + ".") if block else labels[0]   # an exclude_modules suffix
            fix = ("; they are adapted too" if block in routed_blocks else
                   f"; to adapt them use target_parameters={names!r}" if names else "")
            # exclude_modules filters modules only (as PEFT): a parameter target is dropped from its list
            leave_out = f"drop it from {field}" + (f" or add {leaf!r} to exclude_modules"
                                                   if field == "target_modules" else "")
            notes.append(f"{field} adapts the MoE router of {len(labels)} target(s) ({_examples(labels)}): the router "
                         f"scores the experts and picks which ones each token is sent to, so training it shifts the "
                         f"routing, and serving stacks may not load an adapter there (vllm#47088). If that is not "
                         f"intended, {leave_out}. The routed experts are {routed}{fix}")
            continue
        if any(b in routed_blocks for b in shared_blocks[field]):
            continue   # the routed experts are adapted too: the shared ones are deliberate
        fix = (f"To adapt the routed experts, add target_parameters={names!r}" if names else
               f"To adapt the routed experts, name their modules under {blocks[block]}")
        notes.append(f"{field} adapts the shared experts ({_examples(labels)}) but none of the routed experts "
                     f"({routed}): names written for dense MLPs reach only the shared experts' layers here, so the "
                     f"routed experts stay frozen (the vllm#47088 trap). {fix}; if only the shared experts are "
                     f"meant, ignore this warning.")
    return notes
