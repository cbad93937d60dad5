"""The conformance shim (benchmarks/conformance/shim/peft): a `peft` made of surgery's names, whose gaps raise
where they are used. Run in a subprocess, so this process keeps the real peft."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support import REPO_ROOT, subprocess_env

SHIM = REPO_ROOT / "benchmarks" / "conformance" / "shim"


def run_with_shim(code: str) -> str:
    env = {**subprocess_env(), "PYTHONPATH": f"{SHIM}:{REPO_ROOT}"}   # the shim first: it is `peft` there
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_shim_is_surgery_and_its_gaps_raise_where_used():
    out = run_with_shim("""
        import peft, surgery
        from peft.tuners.lora import LoraLayer
        from peft import AdaLoraConfig, get_peft_model
        from peft.utils import ModulesToSaveWrapper
        assert peft.LoraConfig is surgery.LoraConfig and get_peft_model is surgery.get_peft_model
        assert LoraLayer.__module__ == "surgery.methods.lora.layer"
        assert ModulesToSaveWrapper.__module__ == "surgery.rewrite.modules_to_save"
        config = AdaLoraConfig(total_step=1)                 # built at import time by test tables: inert
        assert isinstance(config, AdaLoraConfig) and not isinstance(object(), AdaLoraConfig)
        try:
            config.to_dict()
        except Exception as e:
            print("out-of-scope:", type(e).__name__)
        from peft import definitely_not_a_peft_name
        try:
            definitely_not_a_peft_name()
        except AttributeError as e:
            print("missing:", type(e).__name__)
        import peft.config, surgery.config.base
        assert peft.config is surgery.config.base            # monkeypatching its globals reaches surgery
        """)
    assert "out-of-scope: OutOfScopeAttribute" in out and "missing: MissingInSurgery" in out


def test_check_target_module_exists_answers_with_surgerys_matcher():
    out = run_with_shim("""
        from peft import LoraConfig
        from peft.tuners.tuners_utils import check_target_module_exists
        c = LoraConfig(target_modules=["q"], layers_to_transform=[1], layers_pattern=["layers"])
        print(check_target_module_exists(c, "model.layers.1.q"), check_target_module_exists(c, "model.layers.0.q"),
              check_target_module_exists(LoraConfig(target_modules=r".*\\.k"), "a.k"))
        """)
    assert out.split() == ["True", "False", "True"]
