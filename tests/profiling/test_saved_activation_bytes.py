"""surgery.profiling.saved_activation_bytes counts each kept storage once, leaves parameters out, and frees the
graph (its backward runs)."""
from __future__ import annotations

import torch
from torch import nn

from surgery.profiling import saved_activation_bytes


def test_counts_each_saved_storage_once_and_leaves_parameters_out():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(5, 8)
    # Linear 1 keeps x (for its weight's gradient); ReLU keeps its output, which Linear 2 keeps too: once
    got = saved_activation_bytes(model, lambda: model(x).square().sum())
    assert got == 5 * 8 * 4 + 5 * 16 * 4 + 5 * 4 * 4          # + square() keeps the output of Linear 2
    assert all(p.grad is not None for p in model.parameters())   # backward ran
    model.requires_grad_(False)
    assert saved_activation_bytes(model, lambda: model(x).sum(), backward=False) == 0   # nothing to keep


def test_tensors_of_graph_parts_freed_in_the_forward_drop_out():
    w = nn.Parameter(torch.randn(64, 64))
    model = nn.Module()
    model.w = w

    def step():
        discarded = (w * 2).sin()      # a graph part built and dropped: its saved tensors are freed
        del discarded
        return w.sum()
    assert saved_activation_bytes(model, step) == 0
