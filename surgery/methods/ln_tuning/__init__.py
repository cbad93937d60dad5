"""LN tuning (Zhao et al. 2023, "Tuning LayerNorm in Attention"): train a copy of each normalisation layer.

    LayerNorm:  y = (x - mean(x)) / sqrt(var(x) + eps) * g_a + b_a       RMSNorm:  y = x / rms(x) * g_a
    per adapter a, (g_a, b_a) start as copies of the base layer's (g, b): an untrained adapter is the identity

Every targeted module is replaced by a layer holding one deep copy per adapter (`ln_tuning_layers[a]`); the
active adapter's copy runs instead of the base module, so the trainable parameters are exactly the copies'
(any module can be targeted, as in PEFT: a Linear or a whole block is trained in full).
merge: the active copy and the base module trade places (no arithmetic): merge_and_unload leaves the tuned copy
in the model, unmerge swaps back; one adapter runs, or is merged, at a time. safe_merge refuses a copy with
NaN/inf values (PEFT ignores safe_merge here).

    config.py  LNTuningConfig     layer.py  LNTuningLayer (copies, forward, swap-merge)
    spec.py    the registry entry (PEFT's default targets)      model.py  LNTuningModel
"""
from .config import LNTuningConfig
from .model import LNTuningModel
from .spec import SPEC

__all__ = ["LNTuningConfig", "LNTuningModel"]
