"""VeRA's registry entry: Linear and Conv1D layers, the shared projections, and its cost (λ_b + λ_d per layer;
the projections are buffers, not parameters, so PEFT's trainable-parameter line leaves them out)."""
from __future__ import annotations

from torch import nn

from ...config.enums import PeftType
from ...graph.kinds import in_out_features, is_linear_like
from ...quantized.bnb import BNB_4BIT, BNB_8BIT
from ..fan_in_fan_out import settle_fan_in_fan_out
from ..default_targets import VERA
from ..spec import Handler, MethodSpec, RewriteSite
from .config import VeraConfig
from .layer import Linear
from .model import VeraModel
from .projections import shared_state

DEFAULT_TARGETS = VERA   # PEFT's table for this method (methods/default_targets.py)

HANDLERS = (
    # PEFT wraps bitsandbytes' quantized linears in its plain vera.Linear too; merges go through the
    # dequantized weight (AdapterLayer.dense_base_weight / store_base_weight)
    Handler(BNB_4BIT.accepts, Linear, BNB_4BIT.label, backend=BNB_4BIT),
    Handler(BNB_8BIT.accepts, Linear, BNB_8BIT.label, backend=BNB_8BIT),
    Handler(is_linear_like, Linear, "torch.nn.Linear, transformers.pytorch_utils.Conv1D"),
)


def rewrite_params(site: RewriteSite) -> dict:
    settle_fan_in_fan_out(site)
    if not site.config.save_projection:
        site.note("save_projection=False: vera_A / vera_B are not saved with the adapter; loading rebuilds them from "
                  "projection_prng_key (PEFT's draws, on a CPU generator), as PEFT warns")
    return {"r": site.config.r}


def added_params(base: nn.Module, params: dict, config: VeraConfig) -> int:
    """vera_lambda_b (out) and vera_lambda_d (r)."""
    return in_out_features(base)[1] + params["r"]


SPEC = MethodSpec(
    peft_type=PeftType.VERA,
    config_cls=VeraConfig,
    tuner_cls=VeraModel,
    name="VeRA",
    handlers=HANDLERS,
    rewrite_params=rewrite_params,
    added_params=added_params,
    columns=(("r", "r"),),
    default_targets=DEFAULT_TARGETS,
    shared_state=shared_state,
    checkpoint_rank=lambda tensors: next((t.shape[0] for k, t in tensors.items() if k == "vera_lambda_d"), ""),
)
