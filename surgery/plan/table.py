"""Audit tables of a Plan (tabulate): one row per rewritten module, then the totals."""
from __future__ import annotations

from tabulate import tabulate

FORMATS = {"table": "simple", "markdown": "github"}


def render(plan, fmt: str = "table") -> str:
    if fmt == "json":
        return plan.to_json()
    if fmt not in FORMATS:
        from ..errors import ConfigError

        raise ConfigError(f"format = {fmt!r} is not valid; valid: table, markdown, json")
    rows = [(r.path, r.base_type, "x".join(map(str, r.base_shape)), _method(r), r.rank, _num(r.alpha),
             _num(r.scaling), f"{r.added_params:,d}") for r in plan.rewrites]
    rows += [(m.path, m.base_type, "", "full copy (modules_to_save)", "", "", "", f"{m.params:,d}")
             for m in plan.modules_to_save]
    rows += [(i.path, "injected", "x".join(map(str, i.shape)), i.kind, "", "", "", f"{i.params:,d}")
             for i in plan.injections]
    headers = ("module", "type", "shape", "method", "r", "alpha", "scaling", "added params")
    lines = [f"plan for adapter {plan.adapter_name!r}: {plan.peft_type}"
             + (f" ({plan.task_type})" if plan.task_type else "") + f", {len(plan.rewrites)} modules",
             f"rule: {plan.rules}" if plan.rules else "",
             tabulate(rows, headers=headers, tablefmt=FORMATS[fmt], disable_numparse=True)]
    lines += [f"warning: {w}" for w in plan.warnings]
    lines.append(plan.totals_line())
    return "\n".join(line for line in lines if line)


def _method(rewrite) -> str:
    extras = [x for x, on in (("DoRA", rewrite.use_dora), ("fan_in_fan_out", rewrite.fan_in_fan_out)) if on]
    name = rewrite.method if rewrite.action == "wrap" else f"{rewrite.method} (+adapter)"
    return name + (f" [{', '.join(extras)}]" if extras else "")


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
