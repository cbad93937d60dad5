"""Shared helpers for the surgery-vs-PEFT benchmarks: timing, interleaving, tables.

Every benchmark runs surgery and PEFT in one process on identical fresh models. Timings are the
median of N repeats after warm-up rounds; cases are interleaved (A, B, A, B, ...) so slow drifts
(thermal, other processes, allocator state) hit every case alike.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Callable, Optional

# Keep the tables readable: PEFT and transformers emit deprecation / info warnings on every model.
warnings.filterwarnings("ignore")
logging.getLogger("surgery").setLevel(logging.ERROR)

import torch  # noqa: E402


def parse_args(description: str, default_repeats: int, quick_repeats: int, default_warmup: int = 1,
               extra: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=f"fewer repeats ({quick_repeats} instead of "
                                                              f"{default_repeats}) for a fast smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (overrides --quick)")
    parser.add_argument("--warmup", type=int, default=default_warmup, help="untimed warm-up rounds per case")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    if extra:
        extra(parser)
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = quick_repeats if args.quick else default_repeats
    torch.set_num_threads(args.threads)
    return args


def environment() -> str:
    import peft
    import transformers

    import surgery
    return (f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"transformers {transformers.__version__}, peft {peft.__version__}, surgery {surgery.__version__}, "
            f"{os.cpu_count()} CPUs, {platform.machine()}")


last_discarded = 0
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _system_busy_s() -> Optional[float]:
    """CPU seconds spent busy by the whole machine so far (all processes), from /proc/stat; None if unknown."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class Contention:
    """Measures the CPU time other processes used while a timed call ran (this machine is shared)."""

    def __enter__(self):
        self.sys0, self.own0, self.t0 = _system_busy_s(), _own_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        sys1, own1 = _system_busy_s(), _own_cpu_s()
        if self.sys0 is None or sys1 is None:
            self.foreign = 0.0
        else:
            self.foreign = max(0.0, (sys1 - self.sys0) - (own1 - self.own0))
        # tolerance: /proc/stat counts in clock ticks (10 ms), plus 10% of one core on average
        self.noisy = self.foreign > 2.0 / _CLK_TCK + 0.10 * wall
        return False


def wait_for_quiet(max_wait_s: float = 60.0, window_s: float = 0.25, threshold: float = 0.15) -> float:
    """Sleep until other processes use less than `threshold` of one core over a `window_s` window.

    Returns the seconds waited (gives up after max_wait_s and proceeds anyway).
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait_s:
        with Contention() as c:
            time.sleep(window_s)
        if c.foreign <= threshold * window_s + 1.0 / _CLK_TCK:
            break
    return time.perf_counter() - t0


def interleaved(cases: dict[str, tuple[Optional[Callable[[], object]], Callable[[object], object]]],
                repeats: int, warmup: int = 1, disable_gc: bool = True, quiet: bool = True,
                max_rounds: Optional[int] = None, wait_budget_s: float = 120.0) -> dict[str, list[float]]:
    """Time every case `repeats` times, interleaved round by round (order rotated each round); return
    {name: [seconds, ...]}.

    A case is (setup, fn): setup() runs untimed before each call and its result is passed to fn;
    setup may be None (fn then gets None). Warm-up rounds run every case first and are discarded.
    quiet: before each round, wait until other processes leave the CPU idle (at most wait_budget_s in all,
    then no more waiting); a round
    during which other processes still used noticeable CPU (the machine is shared) is discarded and re-run,
    up to max_rounds rounds in all (default 3 x repeats); after that, noisy rounds are kept.
    The count of discarded rounds is left in `_common.last_discarded`.
    """
    max_rounds = max_rounds if max_rounds is not None else 3 * repeats
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    kept, discarded, round_ = 0, 0, 0
    waited = 0.0
    while kept < repeats:
        row: dict[str, float] = {}
        noisy = False
        if quiet:
            waited += wait_for_quiet(max_wait_s=max(0.0, min(60.0, wait_budget_s - waited)))
        # Rotate the order every round: a case that always runs right after another (e.g. after the bound, with
        # its different memory footprint) would otherwise carry that neighbour's after-effects in every round.
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            setup, fn = cases[name]
            state = setup() if setup is not None else None
            gc.collect()
            if disable_gc:
                gc.disable()
            try:
                with Contention() as c:
                    t0 = time.perf_counter()
                    fn(state)
                    elapsed = time.perf_counter() - t0
            finally:
                gc.enable()
            del state
            row[name] = elapsed
            noisy |= c.noisy
        round_ += 1
        if round_ <= warmup:
            continue
        if noisy and quiet and (round_ - warmup) < max_rounds - (repeats - kept) + 1:
            discarded += 1
            continue
        for name in names:
            times[name].append(row[name])
        kept += 1
    if discarded or waited > 5:
        print(f"  ({discarded} round(s) discarded and {waited:.0f} s spent waiting: other processes were "
              f"using the CPU)", flush=True)
    global last_discarded
    last_discarded = discarded
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of times[num][i] / times[den][i]: both were measured in the same round, so a
    slow stretch of the machine cancels out (more robust than the ratio of the two medians)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def spread(values: list[float]) -> str:
    """min-max as a short string, to show the noise next to the median."""
    return f"{min(values) * 1e3:.1f}-{max(values) * 1e3:.1f}"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub-markdown table (also readable in a terminal)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(lines)


def verdict(value: float, target: float) -> str:
    return f"yes (<= {target:g})" if value <= target else f"NO (> {target:g}, missed by {value / target - 1:.0%})"


def write_json(path: Optional[str], payload: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)


def header(title: str, args: argparse.Namespace) -> None:
    print(f"## {title}")
    print(f"{environment()}")
    print(f"repeats={args.repeats} (median reported), warmup={args.warmup}{' [--quick]' if args.quick else ''}")
    print()
    sys.stdout.flush()
