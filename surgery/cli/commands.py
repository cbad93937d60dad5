"""The work behind each `surgery` subcommand."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tabulate import tabulate

import transformers

from ..api import plan
from ..archs import load_model_for_planning
from ..checkpoint.io import read_config_dict, read_tensors, resolve_adapter_files
from ..config.loading import load_config
from ..facade.tasks import class_for_task
from ..methods.registry import get_method
from ..progress import bar
from ..quantized.simulate import bnb_loading_config, quantize_for_planning
from ..tasks import task_for


def run_plan(args) -> int:
    config = load_config(args.config)
    task = args.task or (config.task_type.value if config.task_type else None)
    model = load_model_for_planning(args.model, task=task, revision=args.revision)
    if getattr(args, "quantize", None):
        quantize_for_planning(model, args.quantize)
    print(plan(model, config, args.adapter_name).table(args.format, summary=args.summary))
    return 0


def run_inspect(args) -> int:
    directory = resolve_adapter_files(args.adapter_dir)
    config = read_config_dict(directory)
    tensors = read_tensors(directory)
    files = [p for p in directory.iterdir() if p.is_file()]
    spec = get_method(config.get("peft_type"))
    containers = {name for h in spec.handlers for name in h.layer.adapter_layer_names}
    modules: dict[str, dict] = {}
    by_module: dict[str, dict] = {}
    for key, tensor in tensors.items():
        if key.startswith("base_model.") and not key.startswith("base_model.model."):   # state the layers share
            path, container = f"(shared) {key.removeprefix('base_model.')}", None
        else:
            path, container = _module_of(key.removeprefix("base_model.model."), containers)
        entry = modules.setdefault(path, {"params": 0, "dtype": str(tensor.dtype).removeprefix("torch."), "r": ""})
        entry["params"] += tensor.numel()
        if container is not None:
            by_module.setdefault(path, {})[container] = tensor
    if spec.checkpoint_rank is not None:
        for path, found in by_module.items():
            modules[path]["r"] = spec.checkpoint_rank(found)
    rows = [(path, e["r"], f"{e['params']:,d}", e["dtype"]) for path, e in sorted(modules.items())]
    total = sum(t.numel() for t in tensors.values())
    if args.format == "json":
        print(json.dumps({"config": config, "modules": modules, "total_params": total,
                          "files": {p.name: p.stat().st_size for p in files}}, indent=2))
        return 0
    fmt = "github" if args.format == "markdown" else "simple"
    print(f"adapter {directory}: {config.get('peft_type')} ({config.get('task_type')}), "
          f"base {config.get('base_model_name_or_path')!r}")
    print(tabulate(rows, headers=("module", "r", "params", "dtype"), tablefmt=fmt, disable_numparse=True))
    print(f"total adapter params: {total:,d}")
    for p in sorted(files):
        print(f"file {p.name}: {p.stat().st_size:,d} bytes")
    return 0


def _module_of(key: str, containers: set) -> tuple[str, object]:
    """(module path, the method's container the key is in, or None) of a checkpoint key."""
    parts = key.split(".")
    index = next((i for i, part in enumerate(parts) if part in containers), None)
    if index is None:
        return key.rpartition(".")[0] or key, None
    return ".".join(parts[:index]), parts[index]


def run_merge(args) -> int:
    directory = resolve_adapter_files(args.adapter)
    task = read_config_dict(directory).get("task_type")
    auto = getattr(transformers, task_for(task).auto_class)
    stages = bar(["load base", "load adapter", "merge", "save"], desc="surgery merge", leave=True)
    for stage in stages:
        if hasattr(stages, "set_postfix_str"):
            stages.set_postfix_str(stage)
        if stage == "load base":
            quantize = getattr(args, "quantize", None)
            extra = {"quantization_config": bnb_loading_config(quantize), "device_map": "cpu"} if quantize else {}
            base = auto.from_pretrained(args.base, **extra)
        elif stage == "load adapter":
            peft_model = class_for_task(task).from_pretrained(base, str(directory))
        elif stage == "merge":
            merged = peft_model.merge_and_unload(progressbar=True, safe_merge=args.safe,
                                                 dequantize=getattr(args, "dequantize", False))
        else:
            merged.save_pretrained(args.out)
    print(f"merged {directory} into {args.base}; saved to {Path(args.out)}", file=sys.stderr)
    return 0


def run_demo(args) -> int:
    from ..demo.run import QUICK_STEPS, run

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else None)
    run(args.out, model_dir=args.model, epochs=args.epochs, max_steps=steps, lr=args.lr, seed=args.seed,
        echo=print)
    return 0
