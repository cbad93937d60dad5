"""Mixed-batch LoRA: one adapter per sample in the same forward (multi-tenant serving, prefill and decode).

Each row i of the batch (a sample, or one of its beams) names an adapter a_i, and needs

    y_i = base(x_i) + s_a B_a A_a x_i            (x_i: the row's T tokens; "__base__" rows add nothing)

Layout, built once per layer and cached while the factors are unchanged (`_Stacks`): adapters are put in
buckets by their rank rounded up to a power of two w (ranks 8/16/32/64 -> four exact buckets; any mix of ranks
gives at most log2(max rank) + 1 buckets, each adapter padded at most 2x), and each bucket holds

    At: (n, in, w) = A^T zero-padded       Bt: (n, w, out) = (s B)^T zero-padded     [bias: (n, 1, out) = s b]

Per batch composition (`_Plan`, cached too) each bucket's rows are sorted into m "slots" of C rows, one adapter
per slot, C = ceil(rows in the bucket / adapters used there) (a busy adapter takes several slots; a short slot
is padded with row 0, whose padded outputs are dropped). Then, per bucket g,

    X_g = x[take_g].view(m, C T, in)      D_g = bmm(bmm(X_g, At[slots_g]), Bt[slots_g])      y[rows_g] += D_g

(one index_select, two bmm, one index_add_ into the base output; rows already consecutive are read as a slice
and accumulated by baddbmm_ in place). No Python loop over adapters or rows: the kernel count is set by the
number of distinct power-of-two ranks. A bucket whose slots are all its adapters in order (every adapter used
once: the usual serving batch) is read in place; otherwise At[slots] is gathered once per composition and kept
in the plan (generate() reuses the plan at every decode step).

Why (one 512 x 512 q_proj with 32 adapters of ranks 8/16/32/64, batch 32, one CPU thread, the cases
interleaved so the factors are cold as in a model; min of 200 / 40 rounds, microseconds, whole layer):

                                                            T=1 (decode)   T=32 (prefill)
    base GEMM alone                                              198            5700
    single adapter (r=8), for reference                          258            7700
    former path: per-sample gather of R=64-padded factors       1330            9760
    every factor concatenated: x A_cat^T, masked, B_cat        1060           28900
    one R=64-padded stack per layer (this code, one bucket)      670            8220
    rank buckets (this code)                                     523            7730

At decode the cost is reading the factors (3.9 MB for this layer: ~300 us from memory); gathering a per-sample
copy reads and writes them again, padding every adapter to rank 64 reads 2.1x the bytes, and the concatenated
form multiplies every token by every adapter (32x the FLOPs). At prefill, temporaries the size of the batch
cost more than the small bmm (fresh multi-MB buffers fault their pages in on every call), hence per-bucket
gathers and the in-place index_add_.

Caches (per layer): the stacks, at most 2x the float factors of the adapters they hold (power-of-two padding;
none for ranks that are powers of two); the plan, index tensors plus, for a composition using part of a bucket,
the used adapters' factors (at most 2x those). Both are rebuilt when an adapter is added or removed, a factor
module or parameter replaced, written in place (its version), given new storage (`.data =`), or a scaling
changed (`_unchanged`, ~20 us for 32 adapters, skipped between the steps of one generate() call).

DoRA adapters (PEFT refuses them in mixed batches), conv / embedding factors, dropout in training, and a
forward that needs gradients run each adapter on its own rows (`grouped_output`); a batch mixing DoRA and
LoRA adapters runs the LoRA rows through the buckets and only the DoRA rows per adapter.
"""
from __future__ import annotations

import operator
from typing import NamedTuple, Optional

import torch
from torch import nn

from ...naming import GenerationNames, names_for_rows


class _Stacks(NamedTuple):
    held: tuple                   # what they were built from (see _unchanged)
    where: dict                   # adapter -> (bucket, position) for the adapters the buckets hold
    buckets: tuple                # (At, Bt, bias or None) per bucket
    dtype: torch.dtype


class _Part(NamedTuple):
    """One bucket's share of a batch: m slots of C rows each."""
    m: int
    C: int
    At: torch.Tensor              # (m, in, w): the bucket's stack, or its used slots gathered
    Bt: torch.Tensor              # (m, w, out)
    bias: Optional[torch.Tensor]  # (m, 1, out) or None
    take: Optional[torch.Tensor]  # row of x for each of the m * C positions (padding: row 0); None: `first` on
    first: int                    # the first row, when the positions are consecutive rows (take is None)
    keep: Optional[torch.Tensor]  # the positions that are real rows (None: all are)
    rows: torch.Tensor            # the row each kept position adds into


class _Plan(NamedTuple):
    stacks: _Stacks
    batch: tuple                  # the batch_adapters it was made for (with rows: the cache key)
    rows: int
    parts: tuple                  # a _Part per bucket used
    rest: frozenset               # adapters used here that run per adapter (DoRA, conv factors, ...)
    drops: bool                   # some bucketed adapter has dropout (training mode then runs per adapter)


# C-level getters: the validity check runs per layer per decode step, over every adapter's factors
_PARAMS, _VERSION = operator.attrgetter("_parameters"), operator.attrgetter("_version")
_WEIGHT, _BIAS, _PTR = operator.methodcaller("get", "weight"), operator.methodcaller("get", "bias"), \
    operator.methodcaller("data_ptr")


def _held(layer) -> tuple:
    """The factor modules and parameters (held, so their ids stay unique), their versions and storages."""
    A, B = list(layer.lora_A._modules.values()), list(layer.lora_B._modules.values())
    weights_A, weights_B = list(map(_WEIGHT, map(_PARAMS, A))), list(map(_WEIGHT, map(_PARAMS, B)))
    biases = list(map(_BIAS, map(_PARAMS, B)))
    params = [p for p in weights_A + weights_B + biases if p is not None]
    scalings = list(layer.scaling.values())
    tensors = [s for s in scalings if isinstance(s, torch.Tensor)]   # hot-swap: filled in place
    if any(t.is_inference() for t in params + tensors):   # no version counter: never trust the cache
        return (None,) + ((),) * 11
    return (tuple(layer.r), A, B, weights_A, weights_B, biases, params, list(map(_VERSION, params)),
            list(map(_PTR, params)), scalings, tensors, list(map(_VERSION, tensors)))


def _unchanged(layer, held) -> bool:
    """No adapter added or removed, no factor module or parameter replaced, written in place (its version) or
    given new storage (`.data = `: its data_ptr), no scaling changed: ~20 us for 32 adapters."""
    r, A, B, weights_A, weights_B, biases, params, versions, ptrs, scalings, tensors, tensor_versions = held
    mods_A, mods_B = layer.lora_A._modules, layer.lora_B._modules
    return (tuple(layer.r) == r and len(mods_A) == len(A) and len(mods_B) == len(B)
            and all(map(operator.is_, mods_A.values(), A)) and all(map(operator.is_, mods_B.values(), B))
            and all(map(operator.is_, map(_WEIGHT, map(_PARAMS, A)), weights_A))
            and all(map(operator.is_, map(_WEIGHT, map(_PARAMS, B)), weights_B))
            and all(map(operator.is_, map(_BIAS, map(_PARAMS, B)), biases))
            and list(map(_VERSION, params)) == versions and list(map(_PTR, params)) == ptrs
            and list(layer.scaling.values()) == scalings and list(map(_VERSION, tensors)) == tensor_versions)


def _width(rank: int) -> int:
    """A bucket's rank: the next power of two (a bounded number of buckets, each padded at most 2x)."""
    return 1 << (rank - 1).bit_length()


def _bucketable(layer, name) -> bool:
    A, B = layer.lora_A._modules[name], layer.lora_B._modules[name]
    return type(A) is nn.Linear and type(B) is nn.Linear and not layer.use_dora.get(name, False)


def _stacks(layer) -> _Stacks:
    cached = layer.__dict__.get("_mixed_stacks")
    if cached is not None and _unchanged(layer, cached.held):
        return cached
    modules = layer.lora_A._modules
    chosen = [n for n in layer.r if n in modules and _bucketable(layer, n)]
    dtype = modules[chosen[0]].weight.dtype if chosen else torch.float32
    chosen = [n for n in chosen if modules[n].weight.dtype == dtype and layer.lora_B[n].weight.dtype == dtype]
    widths: dict[int, list[str]] = {}
    for n in chosen:   # the factor's rank, not r: hot-swap padding may exceed it
        widths.setdefault(_width(modules[n].weight.shape[0]), []).append(n)
    where, buckets = {}, []
    with torch.no_grad():
        for g, (w, members) in enumerate(sorted(widths.items())):
            A0, B0 = modules[members[0]].weight, layer.lora_B[members[0]].weight
            At = A0.new_zeros(len(members), A0.shape[1], w)
            Bt = B0.new_zeros(len(members), w, B0.shape[0])
            has_bias = any(layer.lora_B[n].bias is not None for n in members)
            bias = B0.new_zeros(len(members), 1, B0.shape[0]) if has_bias else None
            for j, n in enumerate(members):
                A, lora_B, s = modules[n].weight, layer.lora_B[n], layer.scaling[n]
                At[j, :, :A.shape[0]] = A.T
                Bt[j, :A.shape[0]] = (lora_B.weight * s).T
                if lora_B.bias is not None:
                    bias[j, 0] = lora_B.bias * s
                where[n] = (g, j)
            buckets.append((At, Bt, bias))
    stacks = _Stacks(_held(layer), where, tuple(buckets), dtype)
    layer.__dict__["_mixed_stacks"] = stacks
    layer.__dict__["_mixed_plan"] = None
    return stacks


def _plan(layer, batch_adapters: tuple, rows: int) -> _Plan:
    cached = layer.__dict__.get("_mixed_plan")
    if (cached is not None and cached.batch is batch_adapters and cached.rows == rows
            and isinstance(batch_adapters, GenerationNames)):
        # the same generate() call (it makes a new GenerationNames each time): its steps share the factors
        return cached
    stacks = _stacks(layer)
    if (cached is not None and cached.stacks is stacks and cached.rows == rows and cached.batch == batch_adapters
            and type(cached.batch) is type(batch_adapters)):   # GenerationNames repeat rows, a tuple does not
        return cached
    row_names = names_for_rows(batch_adapters, rows)
    device = stacks.buckets[0][0].device if stacks.buckets else torch.device("cpu")
    by_bucket: dict[int, dict[int, list[int]]] = {}
    for i, name in enumerate(row_names):
        if name in stacks.where:
            g, j = stacks.where[name]
            by_bucket.setdefault(g, {}).setdefault(j, []).append(i)
    parts = []
    for g in sorted(by_bucket):
        members = by_bucket[g]
        C = -(-sum(len(r) for r in members.values()) // len(members))   # ceil(rows / adapters used)
        slots, take, keep = [], [], []
        for j in sorted(members):
            for k in range(0, len(members[j]), C):
                chunk = members[j][k:k + C]
                keep.extend(range(len(take), len(take) + len(chunk)))
                take.extend(chunk + [0] * (C - len(chunk)))   # padding: row 0, its outputs are dropped
                slots.append(j)
        At, Bt, bias = stacks.buckets[g]
        if slots != list(range(At.shape[0])):   # part of the bucket: gather the used factors once
            index = torch.tensor(slots, device=device)
            At, Bt = At.index_select(0, index), Bt.index_select(0, index)
            bias = None if bias is None else bias.index_select(0, index)
        padded = len(keep) < len(take)
        consecutive = not padded and take == list(range(take[0], take[0] + len(take)))
        kept = [take[p] for p in keep]
        parts.append(_Part(len(slots), C, At, Bt, bias,
                           None if consecutive else torch.tensor(take, device=device), take[0],
                           torch.tensor(keep, device=device) if padded else None,
                           torch.tensor(kept, device=device)))
    used = set(row_names)
    rest = frozenset(n for n in used if n in layer.r and n not in stacks.where)
    drops = any(not isinstance(layer.lora_dropout[n], nn.Identity) for n in used if n in stacks.where)
    plan = _Plan(stacks, batch_adapters, rows, tuple(parts), rest, drops)
    layer.__dict__["_mixed_plan"] = plan
    return plan


def mixed_adapter_output(layer, x: torch.Tensor, result: torch.Tensor, batch_adapters: tuple[str, ...]):
    rows = x.shape[0]
    plan = _plan(layer, batch_adapters, rows)
    dtype = plan.stacks.dtype
    if torch.is_grad_enabled() or (plan.drops and layer.training) or (
            x.dtype != dtype and plan.parts and not layer.cast_input_dtype_enabled):
        # gradients for the factors (the stacks are detached copies), dropout: each adapter on its own rows
        return grouped_output(layer, x, result, names_for_rows(batch_adapters, rows))
    if plan.parts:
        result = _bucketed(plan, x, result, dtype)
    if plan.rest:
        result = grouped_output(layer, x, result, names_for_rows(batch_adapters, rows), only=plan.rest)
    return result


def _bucketed(plan: _Plan, x: torch.Tensor, result: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """result + each row's delta, bucket by bucket, written into result in place (it is the base layer's fresh
    output): per bucket one gather of its rows, two bmm, one index_add_; no temporaries the size of the batch
    (at prefill those cost more than the bmm: fresh multi-MB buffers fault their pages in on every call)."""
    rows = x.shape[0]
    x3 = x.reshape(rows, -1, x.shape[-1])
    if x3.dtype != dtype:
        x3 = x3.to(dtype)
    T = x3.shape[1]
    out3 = result.reshape(rows, T, -1)   # a view (a copy only if the base gave a strided output)
    in_place = result.dtype == dtype
    for p in plan.parts:
        n = p.m * p.C
        xg = x3[p.first:p.first + n] if p.take is None else x3.index_select(0, p.take)
        h = torch.bmm(xg.reshape(p.m, p.C * T, -1), p.At)
        if p.take is None and in_place:   # consecutive rows: accumulate into them directly
            dst = out3[p.first:p.first + n].view(p.m, p.C * T, -1)
            dst.baddbmm_(h, p.Bt)
            if p.bias is not None:
                dst.add_(p.bias)
            continue
        delta = torch.bmm(h, p.Bt) if p.bias is None else torch.baddbmm(p.bias, h, p.Bt)
        delta = delta.view(n, T, -1)
        if p.keep is not None:
            delta = delta.index_select(0, p.keep)
        out3.index_add_(0, p.rows, delta.to(result.dtype))
    return out3.view(result.shape)


def grouped_output(layer, x, result, batch_adapters, only=None):
    """Run each adapter on its own rows (any layer type, DoRA, training); `only`: just these adapters."""
    result = result.clone()
    for name in dict.fromkeys(batch_adapters):
        if name not in layer.r or (only is not None and name not in only):
            continue
        rows = [i for i, a in enumerate(batch_adapters) if a == name]
        index = torch.tensor(rows, device=x.device)
        sub = layer._adapter_output(x[index], name, result[index])
        result = result.index_copy(0, index, sub)
    return result
