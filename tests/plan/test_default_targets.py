"""Every method's default target modules (by model_type) are PEFT's table for that method, entry for entry."""
from __future__ import annotations

import pytest
from peft.utils import constants

from surgery.methods.registry import get_method, implemented_types

TABLES = {t: f"TRANSFORMERS_MODELS_TO_{t.value.replace('_', '')}_TARGET_MODULES_MAPPING" for t in implemented_types()}
WITH_TABLE = [t for t in implemented_types() if isinstance(get_method(t).default_targets, dict)
              and get_method(t).handlers]


@pytest.mark.parametrize("peft_type", WITH_TABLE, ids=lambda t: t.value)
def test_default_targets_equal_peft_s_table(peft_type):
    theirs = getattr(constants, TABLES[peft_type])
    ours = get_method(peft_type).default_targets
    assert {k: (v if isinstance(v, str) else list(v)) for k, v in ours.items()} == \
        {k: (v if isinstance(v, str) else list(v)) for k, v in theirs.items()}
