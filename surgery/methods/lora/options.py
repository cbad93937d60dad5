"""LoRA's structural options as registry hooks (MethodSpec): what spec.py plugs into the method-blind pipeline.

  layer_replication        RESTRUCTURE   the decoder layers stacked before any layer is wrapped (replication.py)
  trainable_token_indices  AUXILIARY     rows of the embedding(s) trained beside LoRA (token_indices.py)
  ensure_weight_tying      resolve_config / tied_modules: tied embedding and head share one adapter
                           (weight_tying.py, tied_factors.py)
"""
from __future__ import annotations

from ..spec import Auxiliary, Restructure
from ..trainable_tokens.wrapper import TrainableTokensWrapper
from .replication import describe, install, plan_replication, replicated_view
from .token_indices import plan_token_wraps
from .weight_tying import resolve_weight_tying, tied_modules

RESTRUCTURE = Restructure(plan=plan_replication, view=replicated_view, install=install, describe=describe)
AUXILIARY = Auxiliary(plan=plan_token_wraps, wrappers=(TrainableTokensWrapper,))
TIED_MODULES = tied_modules


def resolve_config(config, model) -> None:
    """Fields PEFT derives from the model before matching: ensure_weight_tying's rewrite of the targets."""
    resolve_weight_tying(config, model)


def saves_targeted_embeddings(config) -> bool:
    """save_embedding_layers="auto" saves targeted embeddings, except with trainable_token_indices (PEFT: the
    rows are the point, a full embedding would defeat it)."""
    return getattr(config, "trainable_token_indices", None) is None
