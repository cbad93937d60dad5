"""Write the golden fixtures under tests/golden/fixtures/<case>/ with the REAL peft (a test-only oracle).

Run from the repository root:

    python -m tests.golden.make_golden                # all cases (tests/golden/cases/*.py)
    python -m tests.golden.make_golden llama_dora     # some cases
    python -m tests.golden.make_golden --method ia3   # the cases of one method (cases/ia3.py)

Each case folder gets:
  adapter/          exactly what ``peft_model.save_pretrained(adapter/)`` wrote
  base.safetensors  the base model's state dict before peft touched it (tied weights saved as clones)
  io.safetensors    inputs + expected outputs (see peft_oracle.adapted_outputs for the key names)
  case.json         how to rebuild and run the case (see README.md)

After writing, every case is reloaded from disk with peft (peft_oracle.peft_outputs) and must reproduce
the stored outputs; adapted outputs must differ from the base model's by more than 1e-3.
"""
from __future__ import annotations

import contextlib
import io as _io
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import peft  # noqa: E402
from peft import get_peft_model  # noqa: E402
from tests.golden import peft_oracle  # noqa: E402
from tests.golden.cases import CASES  # noqa: E402
from tests.support import tiny_models  # noqa: E402

PERTURB_STD = 0.1
FIXTURES = peft_oracle.FIXTURES


# ---------------------------------------------------------------------------------------------- helpers

class _ListHandler(logging.Handler):
    def __init__(self, records):
        super().__init__(level=logging.WARNING)
        self.records = records

    def emit(self, record):
        self.records.append(record)


def perturb(peft_model, seed: int, rule: dict) -> list[str]:
    """Make every adapter non-identity. Returns the names of the parameters that were changed."""
    torch.manual_seed(seed)
    changed = []
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if any(marker in name for marker in rule.get("scale", ())):
                p.mul_(1 + PERTURB_STD * torch.randn_like(p))
            elif any(marker in name for marker in rule.get("replace", ())):
                p.normal_(0, PERTURB_STD)
            elif p.requires_grad and (name == "bias" or name.endswith(".bias")):  # bias="all" / "lora_only"
                p.add_(PERTURB_STD * torch.randn_like(p))
            else:
                continue
            changed.append(name)
    return changed


def state_dict_for_save(model) -> dict[str, torch.Tensor]:
    # clone: tied weights share storage and safetensors refuses shared tensors
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def safetensors_keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return sorted(f.keys())


def make_case(name: str, spec: dict, seed: int = 0, perturb_seed: int = 1234) -> dict:
    case_dir = FIXTURES / name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    adapter_names = list(spec["adapters"])
    rule = spec["perturb"]
    config_cls = getattr(peft, spec.get("config", "LoraConfig"))
    inputs, input_desc = spec["inputs"]()
    config_kwargs = {}
    for adapter, kw in spec["adapters"].items():
        kw = dict(kw)
        if spec["task_type"] is not None:
            kw["task_type"] = spec["task_type"]
        config_kwargs[adapter] = kw

    meta = {
        "builder": spec["builder"],
        "builder_kwargs": spec["builder_kwargs"],
        "seed": seed,
        "base_load": {"rebuild_with_builder": True, "load_state_dict": True, "strict": True,
                      "file": "base.safetensors"},
        "task_type": spec["task_type"],
        "peft_model_class": spec["peft_model_class"],
        "adapter_names": adapter_names,
        "adapter_subdirs": {a: ("" if i == 0 else a) for i, a in enumerate(adapter_names)},
        "config_class": spec.get("config", "LoraConfig"),
        "config_kwargs": config_kwargs,
        "tolerance": spec.get("tolerance", 1e-6),
        "inputs": {"names": list(inputs), "call": spec.get("call", "kwargs"),
                   "description": input_desc},
        "output_keys": spec["output_keys"],
        "peft_version": peft.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "perturbation": {"seed": perturb_seed, "std": PERTURB_STD, "scale": rule.get("scale", []),
                         "replace": rule.get("replace", []),
                         "rule": "torch.manual_seed(seed) once, then over peft_model.named_parameters() in order: "
                                 "names holding a 'scale' marker *= 1+N(0,std); else names holding a 'replace' "
                                 "marker := N(0,std); else trainable biases (bias='all'/'<method>_only') += "
                                 "N(0,std)"},
        "notes": spec["notes"],
    }

    # --- base model, untouched
    base = getattr(tiny_models, spec["builder"])(seed=seed, **spec["builder_kwargs"]).eval()
    save_file(state_dict_for_save(base), str(case_dir / "base.safetensors"))
    outputs = peft_oracle.forward(meta, base, inputs, suffix=".base")

    # --- peft model
    caught_stdout = _io.StringIO()
    log_records: list[logging.LogRecord] = []
    handler = _ListHandler(log_records)
    logging.getLogger().addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = adapter_names[0]
        model = get_peft_model(base, config_cls(**config_kwargs[first]), adapter_name=first)
        for adapter in adapter_names[1:]:
            model.add_adapter(adapter, config_cls(**config_kwargs[adapter]))
        model.set_adapter(first)
        changed = perturb(model, perturb_seed, rule)
        with contextlib.redirect_stdout(caught_stdout):
            model.print_trainable_parameters()
        model.eval()
        outputs.update(peft_oracle.adapted_outputs(meta, model, inputs))
        model.save_pretrained(str(case_dir / "adapter"))
    logging.getLogger().removeHandler(handler)
    meta["trainable_line"] = caught_stdout.getvalue().strip()
    meta["perturbed_parameters"] = len(changed)
    meta["peft_warnings"] = sorted({str(w.message) for w in caught
                                    if not issubclass(w.category, (DeprecationWarning, FutureWarning))}
                                   | {f"[log {r.name}] {r.getMessage()}" for r in log_records})
    if type(model).__name__ != spec["peft_model_class"]:
        raise AssertionError(f"{name}: got {type(model).__name__}")

    # --- sanity: adapters are not the identity
    for key in spec["output_keys"]:
        keys = [key] + [f"{key}.{a}" for a in adapter_names if f"{key}.{a}" in outputs]
        for k in keys:
            diff = (outputs[k] - outputs[f"{key}.base"]).abs().max().item()
            if not diff > 1e-3:
                raise AssertionError(f"{name}: {k} differs from base by only {diff}")
    if all(kw.get("bias", "none") == "none" for kw in config_kwargs.values()):
        for key in spec["output_keys"]:  # disabling must give back the base model exactly
            torch.testing.assert_close(outputs[f"{key}.disabled"], outputs[f"{key}.base"], atol=1e-6, rtol=0)

    meta["merged_matches_adapted"] = all(
        torch.allclose(outputs[f"{k}.merged"], outputs[k], atol=1e-4, rtol=0) for k in spec["output_keys"])

    # --- write io + meta
    save_file({**{k: v.contiguous() for k, v in inputs.items()}, **outputs}, str(case_dir / "io.safetensors"))
    meta["output_tensors"] = sorted(outputs)
    meta["state_keys"] = safetensors_keys(case_dir / "adapter" / "adapter_model.safetensors")
    if len(adapter_names) > 1:
        meta["state_keys_by_adapter"] = {
            a: safetensors_keys(case_dir / "adapter" / sub / "adapter_model.safetensors")
            for a, sub in meta["adapter_subdirs"].items()}
    (case_dir / "case.json").write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")

    # --- self-check from disk with peft
    case = peft_oracle.load_case(case_dir)
    reloaded = peft_oracle.peft_outputs(case)
    reloaded.update(peft_oracle.base_outputs(case))
    assert sorted(reloaded) == sorted(case.expected), (sorted(reloaded), sorted(case.expected))
    for k, v in case.expected.items():
        torch.testing.assert_close(reloaded[k], v, atol=1e-6, rtol=0, msg=lambda m, k=k: f"{name} {k}: {m}")
    return meta


def main(argv: list[str]) -> None:
    if argv[:1] == ["--method"]:
        argv = [n for n, spec in CASES.items() if spec["module"] in argv[1:]]
    names = argv or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s): {unknown}; known: {list(CASES)}")
    for name in names:
        meta = make_case(name, CASES[name])
        print(f"{name}: {meta['trainable_line']}")
        for w in meta["peft_warnings"]:
            print(f"    warning: {w}")


if __name__ == "__main__":
    # peft writes target_modules (a set) as a list in set-iteration order, which depends on the str hash
    # seed: pin it so that regenerating gives byte-identical adapter_config.json files.
    # One thread: with several, peft's own reload of a case can differ from what it wrote by ~1e-6 (T5), more
    # than the self-check's 1e-6.
    if os.environ.get("PYTHONHASHSEED") != "0" or os.environ.get("OMP_NUM_THREADS") != "1":
        os.environ.update(PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
        os.execv(sys.executable, [sys.executable, "-m", "tests.golden.make_golden", *sys.argv[1:]])
    main(sys.argv[1:])
