"""`surgery plan` and `surgery inspect` for every method: each bundled preset plans on a bundled architecture
with its method's own audit columns and PEFT's totals line; every golden adapter (written by real peft)
inspects with the method's rank column where it has one."""
from __future__ import annotations

import pytest

from surgery.checkpoint.io import read_config_dict
from surgery.config.loading import load_config, preset_names
from surgery.cli.main import main
from surgery.methods.registry import get_method, implemented_types
from tests.golden.peft_oracle import case_names, load_case

PRESETS = preset_names()


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_registered_adapter_method_has_a_preset():
    methods = {load_config(name).peft_type for name in PRESETS}
    wrapping = {t for t in implemented_types() if get_method(t).handlers}
    assert wrapping <= methods, sorted(t.value for t in wrapping - methods)


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_plans_with_its_method_columns(capsys, preset):
    spec = get_method(load_config(preset).peft_type)
    code, out, err = _run(capsys, "plan", "llama-2-7b", "--config", preset, "--summary")
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("modules"))
    for title, _ in spec.columns:
        assert title in header.split(), (title, header)
    assert out.strip().splitlines()[-1].startswith("trainable params: ")
    assert spec.peft_type.value in out.splitlines()[0]


@pytest.mark.parametrize("name", case_names())
def test_inspect_reads_every_golden_adapter(capsys, name):
    case = load_case(name)
    code, out, err = _run(capsys, "inspect", str(case.adapter_dir))
    assert code == 0, err
    spec = get_method(read_config_dict(case.adapter_dir)["peft_type"])
    assert out.startswith(f"adapter {case.adapter_dir}: {spec.peft_type.value}")
    total = int(out.split("total adapter params: ")[1].split()[0].replace(",", ""))
    assert total > 0
    if spec.checkpoint_rank is not None:   # every adapted module shows its rank
        rows = [line.split() for line in out.splitlines()[3:] if line and not line.startswith(("total", "file"))]
        ranked = [row for row in rows if row[1].isdigit()]
        assert ranked, out
