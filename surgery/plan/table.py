"""Audit tables of a Plan (tabulate): one row per rewritten module, then the totals.

The summary view folds the modules that differ only in their numbered path segments (the same projection
in every layer) into one row with a count and the layer ranges: 560 rows on a 70B all-linear plan become 7.
"""
from __future__ import annotations

import re

from tabulate import tabulate

from ..errors import ConfigError
from .memory import memory_lines

FORMATS = {"table": "simple", "markdown": "github"}


def render(plan, fmt: str = "table", summary: bool = False) -> str:
    if fmt == "json":
        if summary:
            raise ConfigError("summary = True applies to the table and markdown formats; json always lists "
                              "every module")
        return plan.to_json()
    if fmt not in FORMATS:
        raise ConfigError(f"format = {fmt!r} is not valid; valid: table, markdown, json")
    keys = [key for _, key in plan.columns]
    blank = ("",) * len(keys)
    rows = [(r.target, _type(r), "x".join(map(str, r.base_shape)),
             _method(r, plan.flags),
             *(_num(r.params.get(k, "")) for k in keys), f"{r.added_params:,d}") for r in plan.rewrites]
    rows += [(m.path, m.base_type, "", f"shares {m.tied_to}'s copy (tied)" if getattr(m, "tied_to", None)
              else "full copy (modules_to_save)", *blank, f"{m.params:,d}") for m in plan.modules_to_save]
    rows += [(a.path, a.base_type, "", a.kind, *blank, f"{a.added_params:,d}") for a in plan.auxiliaries]
    rows += [(i.path, "injected", "x".join(map(str, i.shape)), i.kind, *blank, f"{i.params:,d}")
             for i in plan.injections]
    headers = ("module", "type", "shape", "method", *(header for header, _ in plan.columns), "added params")
    if summary:
        rows, headers = _grouped(rows), ("modules", "count", "layers") + headers[1:-1] + ("added each", "added")
    lines = [f"plan for adapter {plan.adapter_name!r}: {plan.peft_type}"
             + (f" ({plan.task_type})" if plan.task_type else "") + _counted(plan.rewrites),
             *[f"structure: {change.get('description', change)}" for change in plan.structure],
             f"rule: {plan.rules}" if plan.rules else "",
             tabulate(rows, headers=headers, tablefmt=FORMATS[fmt], disable_numparse=True)]
    lines += [f"warning: {w}" for w in plan.warnings]
    lines += memory_lines(plan.memory)
    lines.append(plan.totals_line())
    return "\n".join(line for line in lines if line)


def _type(rewrite) -> str:
    """The base module's type; for a parameter target (path "module.param") the parameter of that type."""
    if rewrite.parameter:
        return f"Parameter of {rewrite.base_type}"
    return rewrite.base_type + (f" ({rewrite.base_format})" if rewrite.base_format else "")


def _counted(rewrites) -> str:
    parameters = sum(1 for r in rewrites if r.parameter)
    return f", {len(rewrites) - parameters} modules" + (f", {parameters} parameters" if parameters else "")


def _method(rewrite, flags) -> str:
    extras = [label for label, key in flags if rewrite.params.get(key)]
    name = rewrite.method if rewrite.action == "wrap" else f"{rewrite.method} (+adapter)"
    return name + (f" [{', '.join(extras)}]" if extras else "")


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _grouped(rows) -> list[tuple]:
    """Rows equal but for the numbers in their paths, folded into one: (pattern, count, ranges, ..., total)."""
    groups: dict[tuple, list[list[int]]] = {}
    for path, *rest in rows:
        numbers = [int(n) for n in re.findall(r"(?<=\.)\d+(?=\.|$)", path)]
        pattern = re.sub(r"(?<=\.)\d+(?=\.|$)", "*", path)
        groups.setdefault((pattern, *rest), []).append(numbers)
    out = []
    for (pattern, *rest), members in groups.items():
        each = int(rest[-1].replace(",", ""))
        firsts = sorted({numbers[0] for numbers in members if numbers})
        out.append((pattern, len(members), _ranges(firsts), *rest[:-1], rest[-1], f"{each * len(members):,d}"))
    return out


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(parts)
