"""(IA)^3 for nn.Linear and transformers' Conv1D (GPT-2's (in, out) weight: the vector broadcasts over the
weight transposed, PEFT's fan_in_fan_out).

    x ──► [× l_in] ──► base_layer ──► [× l_out] ──► y        (one of the two, per layer)
"""
from __future__ import annotations

from .layer import IA3Layer


class Linear(IA3Layer):
    """The shared IA3Layer is nn.Linear-shaped already: (1, in) or (out, 1) vectors over the last dimension."""
