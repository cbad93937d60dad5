"""(IA)^3 (Liu et al. 2022, "Infused Adapter by Inhibiting and Amplifying Inner Activations") for nn.Linear,
transformers' Conv1D and nn.Conv2d/3d: a learned vector rescales each targeted layer's activations.

    output-scaled target:          y = (W x + b) ⊙ l          l ∈ R^out   (ia3_l: (out, 1); convs (1, out, 1, ..))
    feed-forward target:           y = W (x ⊙ l) + b          l ∈ R^in    (ia3_l: (1, in);  convs (1, in, 1, ..))
    several active adapters:       l = l_1 ⊙ l_2 ⊙ ...
    merged:                        W' = W ⊙ l (rows, or columns for feed-forward), b' = b ⊙ l (output-scaled)
    unmerged:                      W = W' / (l + 1e-8), b = b' / (l + 1e-8)      (PEFT's division)

The vectors start at 1 (the identity). Feed-forward targets are config.feedforward_modules (a subset of
target_modules); left unset, PEFT's per-model_type default is used.

    config.py  IA3Config            layer.py   IA3Layer (update, forward, merge)
    spec.py    the registry entry   linear.py / conv.py   the layer types
    model.py   IA3Model             defaults.py  PEFT's default targets and feed-forward modules
"""
from .config import IA3Config
from .model import IA3Model
from .spec import SPEC

__all__ = ["IA3Config", "IA3Model"]
