"""A LoRA layer tied to the input embedding's (ensure_weight_tying on target_modules): one update, seen twice.

The embedding's update is  dE = s (B_e A_e)^T  (A_e: r x vocab, B_e: dim x r). An output head sharing E as its
weight (W = E, vocab x dim) sees the same update when

    A_head = B_e^T  (r x dim)      B_head = A_e^T  (vocab x r)      dW = s B_head A_head = s A_e^T B_e^T = dE

so, as PEFT, the head's factors are parameters over the embedding's storage (transposed views): training
either keeps both equal. Another embedding sharing E (T5's encoder / decoder embed_tokens) holds the very
same factor parameters. The init writes through the views (True: A_head kaiming, i.e. B_e; B_head zero, i.e. A_e),
so the pair starts at dW = 0 as PEFT's does.

Merging: the update lives in the one shared weight, so only the leader folds it in; a tied layer records the
merge without writing it again (PEFT 0.21.2 adds it once per layer, doubling it: its merged model no longer
matches the adapted one). The tie survives the merge: both modules keep the one weight.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import PlanError
from .init import init_linear_like


def tie_factors(layer: nn.Module, leader: nn.Module, adapter_name: str, config) -> None:
    """Make `layer`'s factors for `adapter_name` the leader's (an Embedding LoRA layer with that adapter)."""
    if adapter_name not in _embedding_factors(leader):
        raise PlanError(f"{layer._layer_name()} is tied to {leader._layer_name()}, which has no LoRA embedding "
                        f"factors for adapter {adapter_name!r}: the tie needs the input embedding as a LoRA target")
    emb_A, emb_B = leader.lora_embedding_A[adapter_name], leader.lora_embedding_B[adapter_name]
    if adapter_name in _embedding_factors(layer):   # another embedding on the same weight: the same parameters
        layer.lora_embedding_A[adapter_name] = emb_A
        layer.lora_embedding_B[adapter_name] = emb_B
    else:   # a head whose weight is the embedding's: transposed views of the same storage
        lora_A, lora_B = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
        if lora_A.weight.shape != emb_B.T.shape or lora_B.weight.shape != emb_A.T.shape:
            raise PlanError(f"{layer._layer_name()} cannot share {leader._layer_name()}'s factors: shapes "
                            f"{tuple(lora_A.weight.shape)}/{tuple(lora_B.weight.shape)} vs the embedding's "
                            f"transposed {tuple(emb_B.T.shape)}/{tuple(emb_A.T.shape)}")
        lora_A.weight = nn.Parameter(emb_B.T, requires_grad=emb_B.requires_grad)
        lora_B.weight = nn.Parameter(emb_A.T, requires_grad=emb_A.requires_grad)
        if config.init_lora_weights is not False:   # PEFT inits the head's factors again, through the views
            with torch.no_grad():
                init_linear_like(config.init_lora_weights, lora_A, lora_B, layer.r[adapter_name])
    layer.__dict__.setdefault("tied_adapters", {})[adapter_name] = leader


def _embedding_factors(layer: nn.Module):
    """The layer's lora_embedding_A holder, without creating it (a lazy container on other layer kinds)."""
    return layer._modules.get("lora_embedding_A") or {}


def merges_through_leader(layer: nn.Module, adapter_name: str) -> bool:
    """Whether the adapter's update reaches this layer's weight through its leader's merge (a tied adapter on
    the same weight storage), so merging it here again would add it twice."""
    leader = layer.__dict__.get("tied_adapters", {}).get(adapter_name)
    if leader is None or adapter_name not in _embedding_factors(leader):
        return False
    if not _still_tied(layer, leader, adapter_name):   # deleted and added again since: a record, not a tie
        return False
    mine, theirs = layer.get_base_layer().weight, leader.get_base_layer().weight
    return mine.data_ptr() == theirs.data_ptr() and mine.shape == theirs.shape


def _still_tied(layer: nn.Module, leader: nn.Module, adapter_name: str) -> bool:
    emb_A = leader.lora_embedding_A[adapter_name]
    if adapter_name in _embedding_factors(layer):
        return layer.lora_embedding_A[adapter_name] is emb_A
    return adapter_name in layer.lora_B and layer.lora_B[adapter_name].weight.data_ptr() == emb_A.data_ptr()
