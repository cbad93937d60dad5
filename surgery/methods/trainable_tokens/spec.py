"""Trainable tokens' registry entry: an embedding (or a Linear head) per match, its tied modules as followers.

Per matched module the plan records the token indices and their count; a module tied to a match (an lm_head
sharing the embedding's weight) follows it: the planner adds `tied_to` (plan/ties.py) and the follower adds no
parameters of its own. Without target_modules the model's input embedding is the target (PEFT's default).
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from ...config.enums import PeftType
from ..spec import Handler, MethodSpec, RewriteSite
from .config import TrainableTokensConfig
from .layer import TrainableTokensLayer
from .model import TrainableTokensModel

FALLBACK_TARGET = "embed_tokens"   # PEFT's, for a model without get_input_embeddings


def input_embedding_name(model: nn.Module) -> str:
    """PEFT's default target_modules: the qualified name of model.get_input_embeddings() (a regex string)."""
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):   # not a transformers model, or one without embeddings
        embedding = None
    if embedding is not None:
        for name, module in model.named_modules():
            if module is embedding:
                return name
    return FALLBACK_TARGET


def _rows_out_of_range(base: nn.Module, config, fqn: str) -> Optional[str]:
    if not config.token_indices:   # PEFT's default is [] (a config may be built first, filled in later)
        return ("token_indices = [] selects no token; give the indices of the tokens to train, "
                "e.g. [32000, 32001]")
    rows = base.weight.shape[0]
    beyond = sorted(i for i in config.token_indices if i >= rows)
    if beyond:
        return (f"token_indices {beyond} are out of range for {fqn!r} ({type(base).__name__} with {rows} rows); "
                f"valid indices: 0..{rows - 1} (resize the embeddings first for new tokens)")
    return None


HANDLERS = (
    Handler(lambda m: isinstance(m, nn.Embedding), TrainableTokensLayer, "torch.nn.Embedding",
            refuses=_rows_out_of_range),
    # a Linear's rows are its outputs: PEFT wraps the lm_head tied to an embedding, or a Linear targeted directly
    Handler(lambda m: isinstance(m, nn.Linear), TrainableTokensLayer, "torch.nn.Linear (rows = output units)",
            refuses=_rows_out_of_range),
)


def rewrite_params(site: RewriteSite) -> dict:
    indices = list(site.config.token_indices)
    return {"token_indices": indices, "tokens": len(indices), "init_weights": bool(site.config.init_weights)}


def added_params(base: nn.Module, params: dict, config) -> int:
    """n_tokens x row width for the layer owning the rows; a tied follower shares them (0)."""
    if params.get("tied_to"):
        return 0
    return params["tokens"] * base.weight.shape[1]


SPEC = MethodSpec(
    peft_type=PeftType.TRAINABLE_TOKENS,
    config_cls=TrainableTokensConfig,
    tuner_cls=TrainableTokensModel,
    name="trainable tokens",
    handlers=HANDLERS,
    rewrite_params=rewrite_params,
    added_params=added_params,
    columns=(("tokens", "tokens"), ("follows", "tied_to")),
    default_targets=input_embedding_name,
    follows_ties=True,
    saves_targeted_embeddings=False,   # the adapter is the trained rows: the full embedding is not saved (as PEFT)
)
