"""Run every surgery-vs-PEFT benchmark in turn (with --quick unless --full) and summarise.

    python benchmarks/run_all.py            # quick mode, a few minutes on 2 CPU cores
    python benchmarks/run_all.py --full     # the repeat counts used for docs/benchmarks.md
    python benchmarks/run_all.py --json-dir results/   # also keep each benchmark's JSON results

Each benchmark runs in its own process (fresh allocator and thread pool). A benchmark exits 1 when one of its
speed targets is missed and 2+ on an error; run_all reports both and exits non-zero if any did.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = ["bench_inject.py", "bench_train_step.py", "bench_inference.py", "bench_merge.py", "bench_methods.py"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full repeat counts instead of --quick")
    parser.add_argument("--json-dir", default=None, help="write <name>.json results into this folder")
    parser.add_argument("--only", nargs="*", default=None, help="run only these (e.g. bench_merge)")
    args = parser.parse_args()
    status = {}
    for name in BENCHMARKS:
        if args.only and name.removesuffix(".py") not in [o.removesuffix(".py") for o in args.only]:
            continue
        cmd = [sys.executable, os.path.join(HERE, name)] + ([] if args.full else ["--quick"])
        if args.json_dir:
            os.makedirs(args.json_dir, exist_ok=True)
            cmd += ["--json", os.path.join(args.json_dir, name.replace(".py", ".json"))]
        print(f"\n$ {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        status[name] = (rc, time.perf_counter() - t0)
    print("\nsummary:")
    for name, (rc, secs) in status.items():
        what = {0: "all targets met", 1: "a target was missed"}.get(rc, f"ERROR (exit code {rc})")
        print(f"  {name:22s} {what:24s} ({secs:.0f} s)")
    return 0 if all(rc == 0 for rc, _ in status.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
