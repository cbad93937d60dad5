"""Weight ties for methods whose spec follows them (`MethodSpec.follows_ties`).

A model may share one parameter between modules: an input embedding and its tied output head, T5's `shared`
and the `embed_tokens` of its encoder and decoder. For such a method, every module sharing a parameter with a
target is rewritten too, as a *follower* of the target's layer (its *leader*):

    leader    the first module of a tie group, in module order, that the rule matched
    follower  every other module of the group (matched or not): its Rewrite carries params[TIED_TO] = the
              leader's path; the rewriter passes it the leader's layer instead (update_layer(..., tied_to=layer))

Ties are found by parameter identity, seeing through adapter layers to their base layers, so a second adapter
finds the followers the first one wrapped. Followers come after every leader in the plan: the rewriter builds
leaders first.
"""
from __future__ import annotations

from ..graph.walk import is_adapter_layer

TIED_TO = "tied_to"


def _parameter_owners(graph) -> dict[int, list[str]]:
    """{id(parameter): [paths of the modules holding it]}, adapter layers read through their base layer."""
    owners: dict[int, list[str]] = {}
    for fqn, facts in graph.nodes(data=True):
        module = facts["module"]
        base = module.get_base_layer() if is_adapter_layer(module) else module
        for param in base._parameters.values():
            if param is not None:
                owners.setdefault(id(param), []).append(fqn)
    return owners


def followers(graph, matches: list[str]) -> dict[str, str]:
    """{follower path: leader path} for the tie groups of `matches` (a match tied to an earlier match follows it)."""
    owners = _parameter_owners(graph)
    order = {fqn: i for i, fqn in enumerate(graph.nodes)}
    tied_to: dict[str, str] = {}
    for leader in sorted(matches, key=order.__getitem__):
        if leader in tied_to:
            continue
        module = graph.nodes[leader]["module"]
        base = module.get_base_layer() if is_adapter_layer(module) else module
        for param in base._parameters.values():
            for other in owners.get(id(param), ()) if param is not None else ():
                if other != leader and other not in tied_to:
                    tied_to[other] = leader
    return dict(sorted(tied_to.items(), key=lambda item: order[item[0]]))
