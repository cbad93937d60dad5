"""Quantized base layers (bitsandbytes 4-bit and 8-bit, torchao int8): how an adapter layer reads a quantized base
weight as a dense matrix, writes a new one back, and what the plan reports about it. Method-blind: each
method's handler table has one row per quantized type and builds its layer on `backend_of(module)`."""
from .backend import QuantBackend
from .backends import BACKENDS, backend_of, describe, ready_for_training, stored_numel

__all__ = ["BACKENDS", "QuantBackend", "backend_of", "describe", "ready_for_training", "stored_numel"]
